"""Stage costs measured in a results store, as the estimate for the stages like them.

Why: `editdecay plan`'s time constants are SmolLM2 costs scaled by parameter count, rough by design; a store
knows what each stage really took on its machine. `editdecay status` estimates what is left of a grid from its
own done stages, and `editdecay plan --costs-from STORE` estimates a new grid from a pilot's or an earlier
grid's. A stage is like another when kind, model, fine-tuning type, steps and edit-preserving strategy and the
number of edits agree (a DoRA or Gemma-3 fine-tune costs more than a SmolLM2 LoRA one, 120 steps twice 60, a
re-edit adds its own); without one, the median of its kind stands in (:meth:`MeasuredCosts.estimate` says which).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError


def signature(cost: dict[str, Any]) -> tuple:
    """What a stage's cost depends on besides its kind: a :meth:`Store.stage_costs` row or a planned stage's."""
    preserve = cost.get("preserve")
    return (cost["kind"], cost["model"], cost["ft_type"], cost["n_edits"], cost.get("steps"),
            None if preserve == "none" else preserve)


class MeasuredCosts:
    """Median CPU seconds of done stages, per :func:`signature` and per kind."""

    def __init__(self, costs: list[dict[str, Any]]) -> None:
        self.like: dict[tuple, list[float]] = {}
        self.kind: dict[str, list[float]] = {}
        for c in costs:
            if c["status"] == "done" and c["cpu_seconds"] is not None:
                self.like.setdefault(signature(c), []).append(float(c["cpu_seconds"]))
                self.kind.setdefault(c["kind"], []).append(float(c["cpu_seconds"]))

    @classmethod
    def from_store(cls, path: str | os.PathLike) -> MeasuredCosts:
        from editdecay.experiment.store import Store

        if not Path(path).is_file():
            raise ConfigError(f"{path}: no results store here to take measured stage costs from")
        with Store(path) as db:
            measured = cls(db.stage_costs())
        if not measured.kind:
            raise ConfigError(f"{path}: no done stage has CPU seconds recorded, so there is nothing to estimate from")
        return measured

    def estimate(self, cost: dict[str, Any]) -> tuple[float, str] | None:
        """(CPU seconds, 'like' | 'kind') for one stage, or None when no stage of its kind is measured."""
        like = self.like.get(signature(cost))
        if like:
            return statistics.median(like), "like"
        kind = self.kind.get(cost["kind"])
        return (statistics.median(kind), "kind") if kind else None


def planned_costs(plan: Any) -> list[dict[str, Any]]:
    """Each planned stage as a :meth:`Store.stage_costs`-like row (status 'pending'), as the store would record it:
    the model and largest number of edits of the runs using it, a fine-tune's type, steps and preserve strategy."""
    model: dict[str, str] = {}
    n_edits: dict[str, int] = {}
    for run in plan.runs:
        for sid in set(run.stages.values()):
            model[sid] = max(model.get(sid, ""), str(run.values["model"]))
            n_edits[sid] = max(n_edits.get(sid, 0), int(run.values["n_edits"]))
    rows = []
    for sid, spec in plan.stages.items():
        ft = spec.config.get("finetune") if spec.kind == "finetune" else None
        rows.append({"stage_id": sid, "kind": spec.kind, "status": "pending", "cpu_seconds": None,
                     "model": model.get(sid) or plan.stage_model.get(sid), "n_edits": n_edits.get(sid),
                     "ft_type": ft.get("type") if ft else None, "steps": ft.get("max_steps") if ft else None,
                     "preserve": ft.get("preserve_strategy") if ft else None})
    return rows


def measured_plan_seconds(plan: Any, measured: MeasuredCosts) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds per stage kind of a planned grid: each stage at the median of its measured like stages, else
    of its kind's, else the plan's constants (:func:`editdecay.experiment.cost.planned_stage_seconds`); and how
    many stages each of the three gave."""
    from editdecay.experiment.cost import planned_stage_seconds

    seconds: dict[str, float] = {}
    sources = {"like": 0, "kind": 0, "constants": 0}
    for row in planned_costs(plan):
        estimate = measured.estimate(row)
        value, source = estimate if estimate is not None else (planned_stage_seconds(plan, row["stage_id"]),
                                                               "constants")
        seconds[row["kind"]] = seconds.get(row["kind"], 0.0) + value
        sources[source] += 1
    return seconds, sources
