"""The four models every run measures, named once for the writer and the readers of a results store.

``M`` (the base model), ``M_ft`` (the base model fine-tuned), ``M_ed`` (the edited model) and ``M_ed_ft`` (the
edited model fine-tuned): the ``grp`` column of the store's ``run_groups`` table. The grid validates its
``groups`` key against them (experiment/schema.py), the store holds them, the report reads them
(report/load.py); decay is measured from ``M_ed`` to ``M_ed_ft``.

May import: nothing (the standard library only); every package may import it, below experiment and report
alike, so the report reads the store's vocabulary without importing the experiment package.
"""

from __future__ import annotations

GROUPS = ("M", "M_ft", "M_ed", "M_ed_ft")

__all__ = ["GROUPS"]
