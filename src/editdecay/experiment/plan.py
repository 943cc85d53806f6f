"""Planning: a validated grid's runs -> a graph of content-addressed stages (:class:`Plan`).

Why content addressing: a stage's id is the hash of its kind, its settings and the ids of the stages it reads,
so identical work (one base model, one edit serving every fine-tuning type, one M_ft serving every edit
method) gets one id, is computed once and is found again on a re-run. Nothing here may change what goes into
a stage's config without changing every id a store holds.

Each run is one cell of the grid and measures four groups on the same records and downstream sample:
``M`` (base), ``M_ft`` (base -> fine-tune), ``M_ed`` (base -> edit), ``M_ed_ft`` (edit -> fine-tune).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from editdecay.artifacts import edited_selection
from editdecay.errors import ConfigError, EditDecayError
from editdecay.experiment.facts import TINY_PREFIX, tiny_size
from editdecay.experiment.schema import Grid, finetune_settings, resolved_edit_hparams
from editdecay.util.io import stable_hash

# the seed of every edit (its context templates): the study edits once and varies only the fine-tuning seed
EDIT_SEED = 0
# the statistics stage's settings are editdecay.edit.stats.stats_settings(hparams): one stats stage serves every
# edit (MEMIT and AlphaEdit, any number of edits) that agrees on them
# the edit hyperparameters that decide the target values z (with the model, records and seed, which picks the
# context templates): one targets stage serves MEMIT and AlphaEdit alike, whatever their update settings
TARGET_KEYS = ("layers", "context_template_length_params", "v_lr", "v_num_grad_steps", "v_loss_layer",
               "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_early_stop_loss", "fact_token", "z_batch_size",
               "z_prefix_cache")


@dataclass(frozen=True)
class StageSpec:
    """One node of the stage graph: everything a worker needs to produce its artifact folder."""

    stage_id: str
    kind: str  # stats | base | edit | finetune | evaluate
    config: dict[str, Any]
    deps: dict[str, str]  # role -> stage_id of an input
    resources: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"stage_id": self.stage_id, "kind": self.kind, "config": self.config, "deps": self.deps,
                "resources": self.resources}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageSpec:
        return cls(data["stage_id"], data["kind"], data["config"], data["deps"], data["resources"])


def make_stage(kind: str, config: dict[str, Any], deps: dict[str, str], resources: dict[str, float]) -> StageSpec:
    """Content address: the hash of kind, settings and input stage ids (so equal inputs -> equal ids)."""
    return StageSpec(f"{kind}-{stable_hash({'kind': kind, 'config': config, 'deps': deps})}", kind, config, deps,
                     resources)


@dataclass
class Run:
    """One grid cell: its axis values, the resolved settings, and the stage ids of its four groups."""

    run_id: str
    values: dict[str, Any]
    edit_hparams: dict[str, Any]
    finetune: dict[str, Any]
    stages: dict[str, str] = field(default_factory=dict)  # role -> stage id
    groups: dict[str, str] = field(default_factory=dict)  # M/M_ft/M_ed/M_ed_ft -> evaluate stage id

    def row(self, config: dict[str, Any]) -> dict[str, Any]:
        v = self.values
        layers = v["layers"] if isinstance(v["layers"], str) else ",".join(map(str, v["layers"]))
        return {"run_id": self.run_id, "model": v["model"], "method": v["method"], "edit_data": v["edit_data"],
                "n_edits": v["n_edits"], "ft_type": v["ft_type"], "layers": layers, "modules": v["modules"],
                "ft_data": v["ft_data"], "seed": v["seed"], "config": config, "groups": self.groups,
                "stages": self.stages}


@dataclass
class Plan:
    """The expanded grid: runs, the distinct stages in dependency order, and the records they evaluate."""

    grid: Grid
    runs: list[Run]
    stages: dict[str, StageSpec]  # topological order (dict keeps insertion order)
    records: list[dict[str, Any]]
    stage_uses: dict[str, int]  # how many runs use each stage
    stage_model: dict[str, str] = field(default_factory=dict)  # stage id -> base model (for cost scaling)

    @property
    def shared(self) -> int:
        return sum(1 for n in self.stage_uses.values() if n > 1)


def _resolve_ft_layers(sel: Any, edit_layers: list[int], n_layers: int, path: str) -> list[int] | str:
    """'edited'/'non-edited' -> explicit lists, so M_ft and M_ed_ft train exactly the same parameters."""
    if sel in ("edited", "non-edited"):
        return edited_selection(sel, edit_layers, n_layers)
    return sel


def expand(grid: Grid) -> Plan:
    """Runs -> stages. Equal settings give equal stage ids, so shared work appears once."""
    from editdecay.data.records import load_edit_records
    from editdecay.edit.stats import stats_settings

    stages: dict[str, StageSpec] = {}
    uses: dict[str, int] = {}
    records_rows: dict[tuple[str, str], dict[str, Any]] = {}
    records_cache: dict[tuple[str, int], tuple[str, list[dict[str, Any]]]] = {}
    runs: list[Run] = []
    res = grid.resources

    stage_model: dict[str, str] = {}
    if grid.device:
        res = {kind: {**r, "device": grid.device} for kind, r in res.items()}
    precision = {} if grid.dtype == "float32" else {"dtype": grid.dtype}  # float32 stages keep their ids

    def add(spec: StageSpec, run_stages: set[str]) -> str:
        stages.setdefault(spec.stage_id, spec)
        stage_model[spec.stage_id] = values["model"]
        if spec.stage_id not in run_stages:
            run_stages.add(spec.stage_id)
            uses[spec.stage_id] = uses.get(spec.stage_id, 0) + 1
        return spec.stage_id

    for values in grid.runs_values():
        model, data, n = values["model"], values["edit_data"], values["n_edits"]
        if (data, n) not in records_cache:
            try:
                recs = load_edit_records(data, n=n)
            except EditDecayError as exc:
                raise ConfigError(f"{grid.path}: 'edit_data': {exc}") from None
            if len(recs) < n:
                raise ConfigError(f"{grid.path}: 'n_edits': {n} edits asked for but {data!r} has {len(recs)} records")
            dicts = [r.to_dict() for r in recs]
            records_cache[(data, n)] = (stable_hash(dicts), dicts)
        records_hash, record_dicts = records_cache[(data, n)]
        for r in record_dicts:
            records_rows[(r["case_id"], data)] = {**r, "edit_data": data}
        info = grid.model_info.get(model) or {"num_layers": None}
        edit_hp = resolved_edit_hparams(grid, values)
        ft = finetune_settings(grid, values)
        ft_layers = _resolve_ft_layers(values["layers"], edit_hp.get("layers"), info["num_layers"], grid.path)
        ft_config = {**ft, "type": values["ft_type"], "layers": ft_layers, "modules": values["modules"],
                     "data": values["ft_data"], "seed": values["seed"]}
        evaluation = {"edit_data": data, "n_edits": n, "records_hash": records_hash, **grid.evaluate, **precision}
        seen: set[str] = set()

        model_cfg: dict[str, Any] = {"model": model}
        if model.startswith(TINY_PREFIX):
            model_cfg["tiny"] = tiny_size(grid.model_info.get(model, {}))
        base = add(make_stage("base", model_cfg, {}, res["base"]), seen)
        stats = add(make_stage("stats", {**stats_settings(edit_hp), **precision}, {"model": base}, res["stats"]), seen)
        z_cfg = {k: edit_hp.get(k) for k in TARGET_KEYS}
        targets = add(make_stage("targets", {"edit_data": data, "n_edits": n, "records_hash": records_hash,
                                             "z": z_cfg, "seed": EDIT_SEED, **precision}, {"model": base},
                                 res["targets"]), seen)
        edit = add(make_stage("edit", {"method": values["method"], "edit_data": data, "n_edits": n,
                                       "records_hash": records_hash, "hparams": edit_hp, "seed": EDIT_SEED,
                                       "keep_model": "edit" in grid.keep, **precision},
                              {"model": base, "stats": stats, "targets": targets}, res["edit"]), seen)
        keep_ft = "finetune" in grid.keep
        ft_base = None
        if "M_ft" in grid.groups:  # the unedited model has no edits to preserve: one M_ft serves every strategy
            ft_base = add(make_stage("finetune", {"finetune": ft_config, "track_edits": False, "keep_model": keep_ft,
                                                  **precision}, {"model": base}, res["finetune"]), seen)
        ft_edit_config = ft_config if values["preserve"] == "none" else \
            {**ft_config, "preserve_strategy": values["preserve"]}
        ft_edit = add(make_stage("finetune", {"finetune": ft_edit_config, "track_edits": True, "keep_model": keep_ft,
                                              **precision}, {"model": edit}, res["finetune"]), seen)
        groups = {}
        for grp, src in (("M", base), ("M_ft", ft_base), ("M_ed", edit), ("M_ed_ft", ft_edit)):
            if grp in grid.groups:
                groups[grp] = add(make_stage("evaluate", evaluation, {"model": src}, res["evaluate"]), seen)
        run_config = {"values": values, "edit": edit_hp, "finetune": ft_config, "evaluate": grid.evaluate}
        run = Run(run_id=f"run-{stable_hash({'grid': grid.name, **run_config})}", values=values,
                  edit_hparams=edit_hp, finetune=ft_config,
                  stages={"base": base, "stats": stats, "targets": targets, "edit": edit, "finetune_edit": ft_edit,
                          **({"finetune_base": ft_base} if ft_base else {}),
                          **{f"eval_{g}": s for g, s in groups.items()}},
                  groups=groups)
        runs.append(run)
    ordered = _topological(stages)
    rows = [{"case_id": r["case_id"], "edit_data": r["edit_data"], "subject": r["subject"],
             "target_new": r["target_new"], "target_true": r.get("target_true"), "prompt": r["prompt"]}
            for r in records_rows.values()]
    return Plan(grid=grid, runs=runs, stages=ordered, records=rows, stage_uses=uses, stage_model=stage_model)


def _topological(stages: dict[str, StageSpec]) -> dict[str, StageSpec]:
    order: dict[str, StageSpec] = {}

    def visit(sid: str, trail: tuple[str, ...]) -> None:
        if sid in order:
            return
        if sid in trail:
            raise ConfigError(f"stage graph has a cycle through {sid}")
        for dep in stages[sid].deps.values():
            visit(dep, (*trail, sid))
        order[sid] = stages[sid]

    for sid in stages:
        visit(sid, ())
    return order


def is_transient(spec: StageSpec) -> bool:
    """A full fine-tune the grid does not keep: its weights live only until every evaluation of it is done."""
    return spec.kind == "finetune" and spec.config["finetune"].get("type") == "full" and \
        not spec.config.get("keep_model", True)
