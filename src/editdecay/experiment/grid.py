"""The grid in one import, for users and notebooks: ``load_grid``/``parse_grid`` (:mod:`.schema`) and ``expand``
(:mod:`.plan`). A thin re-export kept because ``editdecay.experiment.grid`` is the documented entry point;
code inside the package imports :mod:`.schema` and :mod:`.plan` directly.
"""

from __future__ import annotations

from editdecay.experiment.plan import Plan, Run, StageSpec, expand
from editdecay.experiment.schema import Grid, load_grid, parse_grid

__all__ = ["Grid", "Plan", "Run", "StageSpec", "expand", "load_grid", "parse_grid"]
