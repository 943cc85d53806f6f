"""Small shared helpers that know nothing of the pipeline.

``io`` (atomic writes, hashing, JSON), ``env`` (library versions, machine facts, seeding), ``layers`` (the one
parser for typed layer lists), ``overrides`` (the one ``--set KEY=VALUE`` parser of every command).

May import: the standard library, third-party libraries and :mod:`editdecay.errors` only. Every other
package may import it.
"""
