"""The activation-shift table, from the store's ``activation_shift`` rows (written by ``editdecay analyze shift``).

Per edited fine-tune stage and layer, the means over the edit prompts of ‖h_ed − h_base‖, ‖h_ed_ft − h_ed‖
(also relative to ‖h_base‖), their ratio, and the angle between the two shifts where both are non-zero — the
same summary ``editdecay analyze shift`` prints (editdecay.analyze.shift).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from editdecay.report.load import Results
from editdecay.report.tables import Column, Table


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def per_layer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer means of one stage's per-record rows (as analyze.shift.shift_between summarises them)."""
    by_layer: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_layer[r["layer"]].append(r)
    out = []
    for layer, recs in sorted(by_layer.items()):
        edit, ft = _mean([r["edit_shift"] for r in recs]), _mean([r["ft_shift"] for r in recs])
        rel = [(r["edit_shift"] / r["base_norm"], r["ft_shift"] / r["base_norm"]) for r in recs if r["base_norm"]]
        out.append({"layer": layer, "n": len(recs), "edit_shift": edit, "ft_shift": ft,
                    "ratio": (ft / edit) if edit and ft is not None else None,
                    "edit_shift_rel": _mean([a for a, _ in rel]), "ft_shift_rel": _mean([b for _, b in rel]),
                    "angle_deg": _mean([r["angle_deg"] for r in recs]), "cos": _mean([r["cos"] for r in recs]),
                    "n_angle_defined": sum(not math.isnan(r["cos"]) for r in recs)})
    return out


def shift_table(res: Results) -> Table:
    """One row per (run configuration, layer) whose edited fine-tune the store has a shift analysis of."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for run in res.runs:
        stage = res.edited_ft_stage(run)
        if stage is None or stage.stage_id in seen or stage.stage_id not in res.activation_shift:
            continue
        seen.add(stage.stage_id)
        config = {"model": run.model, "method": run.method, "ft_type": run.ft_type, "layers": run.layer_selection,
                  "seed": run.seed}
        rows.extend({**config, **row} for row in per_layer(res.activation_shift[stage.stage_id]))
    columns = [Column("model", "model"), Column("method", "method"), Column("ft_type", "ft type"),
               Column("layers", "layers"), Column("seed", "seed", "int"), Column("layer", "layer", "int"),
               Column("n", "prompts", "int"), Column("edit_shift", "‖h_ed − h_base‖", "float"),
               Column("ft_shift", "‖h_ft − h_ed‖", "float"), Column("ratio", "ratio", "float"),
               Column("edit_shift_rel", "edit shift / ‖h_base‖", "float"),
               Column("ft_shift_rel", "ft shift / ‖h_base‖", "float"), Column("angle_deg", "angle °", "num"),
               Column("cos", "cos", "float")]
    return Table("activation_shift", "Activation shift at the edited layers",
                 "Hidden state at the subject's last token (the token the edit wrote its keys at), per layer, mean "
                 "over the edit prompts: the shift editing caused (h_ed − h_base) and the one fine-tuning caused "
                 "afterwards (h_ft − h_ed); angle 180° = fine-tuning pushed the state straight back, 90° = an "
                 "unrelated direction (undefined where a shift is zero).", columns, rows)
