"""CLI subcommands: one module each, ``add_parser(subparsers)`` registers it and sets ``handler``.

The top of the stack: it may import every package (stages, experiment, report, api, util); nothing in the
package imports it except :mod:`editdecay.cli`. Heavy libraries are imported inside ``run`` so ``--help``
stays instant; ``--set`` goes through :mod:`editdecay.util.overrides`.
"""
