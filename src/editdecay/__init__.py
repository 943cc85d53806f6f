"""editdecay: do knowledge edits survive fine-tuning?

The pipeline flows one way: models -> data -> edit -> finetune -> evaluate -> experiment -> report.
Import the user-facing functions from :mod:`editdecay.api`.
"""

__version__ = "0.1.0"
