"""Evaluation: edit metrics per record (ROME/MEMIT), decay metrics, downstream accuracy, perplexity.

``scoring`` is the one batched log-prob path; ``api`` holds what other stages and users call.
"""
