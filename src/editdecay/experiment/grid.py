"""Grid configs: YAML -> validated :class:`Grid` -> runs -> a graph of content-addressed stages.

Why content addressing: a stage's id is the hash of its kind, its settings and the ids of the stages it reads,
so identical work (one base model, one edit serving every fine-tuning type, one M_ft serving every edit
method) gets one id, is computed once and is found again on a re-run.

Each run is one cell of the grid and measures four groups on the same records and downstream sample:
``M`` (base), ``M_ft`` (base -> fine-tune), ``M_ed`` (base -> edit), ``M_ed_ft`` (edit -> fine-tune).

A grid file (see configs/tiny.yaml for a small complete one)::

    name: demo
    models: [smollm2-135m]          # registered name, local folder, hub id, or tiny:<arch> (tests/smoke)
    methods: [memit]                # memit | alphaedit
    edit_data: [counterfact]        # named data set or file
    n_edits: [10]
    ft_types: [lora]                # full | lora | dora
    layers: [all]                   # fine-tuning layer selections: all | edited | non-edited | "4-8" | [4, 5]
                                    # (each list entry is one selection: [[4, 5], all] is two)
    modules: ["attn,mlp"]
    ft_data: [commonsense]
    seeds: [0]
    edit: {layers: [3, 4, 5]}       # edit hyperparameters for every run
    finetune: {max_steps: 30}       # FinetuneConfig settings for every run
    evaluate: {downstream: [boolq], limit: 20}
    overrides:                      # applied in order where every `when` key matches the run
      - when: {method: alphaedit}
        edit: {nullspace_threshold: 0.02}
    slices:                         # optional: the runs are the union of these products, each entry
      - {ft_types: [lora, full]}    # replacing some of the axes above (a study that is not one product)
      - {ft_data: [hotpotqa], ft_types: [lora]}
    keep: [finetune]                # optional: stages that keep a full model copy (default: edit stages keep
                                    # deltas, LoRA/DoRA adapters, full fine-tunes drop theirs once evaluated)
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editdecay.edit.registry import method_names
from editdecay.errors import ConfigError, EditDecayError
from editdecay.util.io import stable_hash

METHODS = method_names()  # the method registry (editdecay.edit.registry)
AXES = {  # YAML key -> the run field it fills
    "models": "model", "methods": "method", "edit_data": "edit_data", "n_edits": "n_edits",
    "ft_types": "ft_type", "layers": "layers", "modules": "modules", "ft_data": "ft_data", "seeds": "seed",
    "preserve": "preserve",
}
PRESERVE = ("none", "freeze", "nullspace", "replay", "reedit")  # editdecay.preserve strategies (docs/preserve.md)
TOP_KEYS = set(AXES) | {"name", "description", "workdir", "edit", "finetune", "evaluate", "overrides", "resources",
                        "model_info", "stats", "keep", "slices", "groups", "dtype", "device"}
KEEP_KINDS = ("edit", "finetune")
GROUPS = ("M", "M_ft", "M_ed", "M_ed_ft")
REQUIRED_GROUPS = ("M_ed", "M_ed_ft")  # decay is M_ed -> M_ed_ft: every run measures these
EVALUATE_KEYS = {"downstream": None, "limit": 20, "seed": 0, "mode": "loglik", "batch_size": 32, "fluency": False}
# what an edit may depend on. Not the seed: the study edits once and varies only the fine-tuning seed, so every
# seed of a run fine-tunes the same edited model (the context templates use EDIT_SEED)
EDIT_AXES = ("model", "method", "edit_data", "n_edits")
EDIT_SEED = 0
RESOURCE_KINDS = ("stats", "targets", "base", "edit", "finetune", "evaluate")
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb")
DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0, "memory_gb": 0}
TINY_PREFIX = "tiny:"
# the statistics stage's settings are editdecay.edit.stats.stats_settings(hparams): one stats stage serves every
# edit (MEMIT and AlphaEdit, any number of edits) that agrees on them
# the edit hyperparameters that decide the target values z (with the model, records and seed, which picks the
# context templates): one targets stage serves MEMIT and AlphaEdit alike, whatever their update settings
TARGET_KEYS = ("layers", "context_template_length_params", "v_lr", "v_num_grad_steps", "v_loss_layer",
               "v_weight_decay", "clamp_norm_factor", "kl_factor", "v_early_stop_loss", "fact_token", "z_batch_size",
               "z_prefix_cache")
# rough 2-core-CPU costs of SmolLM2-135M, scaled by parameter count for other models (plan estimates only).
# targets_s_per_edit: the 25-step target optimisation with the context templates (8.4 s/edit, batched, one thread:
# benchmarks/bench_edit.py); update_s_per_edit: keys and the layer-by-layer solve (~50 s per 100 edits); train tokens/s: LoRA steps of batch 4 (forward + backward + optimiser)
COST = {"stage_overhead_s": 2.0, "base_s": 3.0, "tokens_per_s": 530.0, "train_tokens_per_s": 60.0,
        "targets_s_per_edit": 8.4, "update_s_per_edit": 0.5, "eval_tokens_per_record": 120, "downstream_tokens_per_item": 400}
SMOLLM2_PARAMS = 135e6


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

    def estimate_seconds(self) -> dict[str, float]:
        """Rough seconds per stage kind from the COST constants (for `editdecay plan`)."""
        out: dict[str, float] = {}
        for spec in self.stages.values():
            model = self.stage_model.get(spec.stage_id, "")
            scale = self.grid.model_info.get(model, {}).get("params", SMOLLM2_PARAMS) / SMOLLM2_PARAMS
            out[spec.kind] = out.get(spec.kind, 0.0) + _estimate(spec, scale)
        return out


@dataclass
class Grid:
    """A validated grid file."""

    name: str
    path: str
    axes: dict[str, list[Any]]
    edit: dict[str, Any]
    finetune: dict[str, Any]
    evaluate: dict[str, Any]
    overrides: list[dict[str, Any]]
    resources: dict[str, dict[str, float]]
    model_info: dict[str, dict[str, Any]]  # model -> {"num_layers", "params"} (read from config.json)
    workdir: str | None = None
    keep: tuple[str, ...] = ()  # stage kinds that keep a full model copy ("edit", "finetune")
    slices: list[dict[str, list[Any]]] = field(default_factory=list)  # each: the axes of one product
    groups: tuple[str, ...] = GROUPS  # which of the four models each run measures
    dtype: str = "float32"  # what every stage loads the model in (part of each stage's id when not float32)
    device: str | None = None  # where stages run (not part of any id: the same work on another device)
    raw: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)  # model -> its transformers config (or a table key)
    _edit_cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def runs_values(self) -> list[dict[str, Any]]:
        """Every run's axis values: the product of the axes, or the union of the slices' products."""
        keys = list(AXES)
        out: dict[str, dict[str, Any]] = {}
        for axes in self.slices or [self.axes]:
            for combo in itertools.product(*(axes[k] for k in keys)):
                values = dict(zip((AXES[k] for k in keys), combo, strict=True))
                out.setdefault(stable_hash(values), values)
        return list(out.values())


# ----------------------------------------------------------------------------------------------------------
# loading and validation


def load_grid(path: str | os.PathLike, check_models: bool = True) -> Grid:
    """Read and validate a grid file; every problem raises ConfigError naming the file and the key."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: grid file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_grid(raw, str(path), check_models=check_models)


def _err(path: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: '{key}': {message}")


def _as_list(path: str, key: str, value: Any) -> list[Any]:
    if value is None:
        raise _err(path, key, "is required (a value or a list of values)")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _err(path, key, "must not be empty")
    return values


def _mapping(path: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(path, key, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _parse_axes(path: str, raw: dict[str, Any], model_info: dict[str, Any]) -> dict[str, list[Any]]:
    """The nine axes of a grid (or of one slice: ``path`` then names it), each a validated list of values."""
    from editdecay.finetune.config import FT_TYPES, parse_layers

    axes: dict[str, list[Any]] = {}
    models = []
    for i, m in enumerate(_as_list(path, "models", raw.get("models"))):
        if isinstance(m, dict):  # {name: ..., num_layers: ..., params: ...} for hub ids not on this machine
            if "name" not in m:
                raise _err(path, f"models[{i}]", "a model mapping needs 'name' (and may give num_layers, params)")
            model_info.setdefault(str(m["name"]), {}).update({k: v for k, v in m.items() if k != "name"})
            m = m["name"]
        if not isinstance(m, str) or not m.strip():
            raise _err(path, f"models[{i}]", "must be a model name, folder or tiny:<arch>")
        models.append(m)
    axes["models"] = models

    methods = [str(m).lower() for m in _as_list(path, "methods", raw.get("methods"))]
    for m in methods:
        if m not in METHODS:
            raise _err(path, "methods", f"unknown method {m!r}; allowed: {', '.join(METHODS)}")
    axes["methods"] = methods

    axes["edit_data"] = [str(d) for d in _as_list(path, "edit_data", raw.get("edit_data"))]
    n_edits = _as_list(path, "n_edits", raw.get("n_edits"))
    for n in n_edits:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _err(path, "n_edits", f"{n!r} is not a positive integer")
    axes["n_edits"] = n_edits

    ft_types = [str(t).lower() for t in _as_list(path, "ft_types", raw.get("ft_types"))]
    for t in ft_types:
        if t not in FT_TYPES:
            raise _err(path, "ft_types", f"unknown fine-tuning type {t!r}; allowed: {', '.join(FT_TYPES)}")
    axes["ft_types"] = ft_types

    layer_sels = []
    for sel in _as_list(path, "layers", raw.get("layers", ["all"])):
        try:
            layer_sels.append(parse_layers(sel))
        except ConfigError as exc:
            hint = " (each entry is one selection: write [[4, 5]] or ['4-5'] for layers 4 and 5 together)" \
                if isinstance(sel, int) else ""
            raise _err(path, "layers", f"{exc}{hint}") from None
    axes["layers"] = layer_sels
    axes["modules"] = [str(m) for m in _as_list(path, "modules", raw.get("modules", ["attn,mlp"]))]
    axes["ft_data"] = [str(d) for d in _as_list(path, "ft_data", raw.get("ft_data", ["commonsense"]))]
    seeds = _as_list(path, "seeds", raw.get("seeds", [0]))
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise _err(path, "seeds", f"{s!r} is not an integer")
    axes["seeds"] = seeds
    preserve = [str(x).lower() for x in _as_list(path, "preserve", raw.get("preserve", ["none"]))]
    for x in preserve:
        if x not in PRESERVE:
            raise _err(path, "preserve", f"unknown strategy {x!r}; allowed: {', '.join(PRESERVE)}")
    axes["preserve"] = preserve
    for key, values in axes.items():
        keys = [stable_hash(v) for v in values]
        if len(set(keys)) != len(keys):
            raise _err(path, key, f"lists a value twice: {values}")

    return axes


def _parse_slices(path: str, raw: dict[str, Any], model_info: dict[str, Any]) -> list[dict[str, list[Any]]]:
    """``slices:``: each entry replaces some axes of the top-level grid; the runs are the union of the slices'
    products (a run in two slices is one run), so one file can mirror a study whose grid is not one product."""
    entries = raw.get("slices")
    if entries is None:
        return []
    if not isinstance(entries, list) or not entries:
        raise _err(path, "slices", "must be a non-empty list of mappings of axis keys")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _err(path, f"slices[{i}]", f"must be a mapping of axis keys ({', '.join(AXES)})")
        bad = sorted(set(entry) - set(AXES) - {"name"})
        if bad:
            raise _err(path, f"slices[{i}].{bad[0]}", f"unknown key; a slice sets axes: {', '.join(AXES)} (and name)")
        merged = {**{k: raw[k] for k in AXES if k in raw}, **{k: v for k, v in entry.items() if k != "name"}}
        out.append(_parse_axes(f"{path}: slices[{i}]", merged, model_info))
    return out


def parse_grid(raw: Any, path: str = "<grid>", check_models: bool = True) -> Grid:
    """Validate a loaded grid mapping (see module docstring for the keys)."""
    from editdecay.finetune.config import FinetuneConfig, parse_layers

    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid file must be a YAML mapping of keys ({', '.join(sorted(TOP_KEYS))})")
    unknown = sorted(set(map(str, raw)) - TOP_KEYS)
    if unknown:
        raise _err(path, unknown[0], f"unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise _err(path, "name", "must be a word of letters, digits, '-' and '_'")

    model_info = _mapping(path, "model_info", raw.get("model_info"))
    axes = _parse_axes(path, raw, model_info)
    slices = _parse_slices(path, raw, model_info)
    models = list(dict.fromkeys([*axes["models"], *(m for sl in slices for m in sl["models"])]))

    edit = _mapping(path, "edit", raw.get("edit"))
    finetune = _mapping(path, "finetune", raw.get("finetune"))
    for reserved in ("type", "layers", "modules", "data", "seed"):
        if reserved in finetune:
            raise _err(path, f"finetune.{reserved}", f"is a grid axis: set it with the top-level "
                       f"'{ {'type': 'ft_types', 'data': 'ft_data', 'seed': 'seeds'}.get(reserved, reserved)}' key")
    evaluate = _mapping(path, "evaluate", raw.get("evaluate"))
    bad = sorted(set(evaluate) - set(EVALUATE_KEYS))
    if bad:
        raise _err(path, f"evaluate.{bad[0]}", f"unknown key; allowed: {', '.join(EVALUATE_KEYS)}")
    evaluate = {**EVALUATE_KEYS, **evaluate}
    _check_downstream(path, evaluate["downstream"])

    overrides = []
    for i, ov in enumerate(raw.get("overrides") or []):
        key = f"overrides[{i}]"
        if not isinstance(ov, dict):
            raise _err(path, key, "must be a mapping with 'when' and 'edit'/'finetune'")
        extra = sorted(set(ov) - {"when", "edit", "finetune"})
        if extra:
            raise _err(path, f"{key}.{extra[0]}", "unknown key; allowed: when, edit, finetune")
        when = _mapping(path, f"{key}.when", ov.get("when"))
        for wk in when:
            if wk not in AXES.values():
                raise _err(path, f"{key}.when.{wk}", f"unknown axis; allowed: {', '.join(AXES.values())}")
        if ov.get("edit") and set(when) - set(EDIT_AXES):
            raise _err(path, f"{key}.when", f"an edit override may only depend on {', '.join(EDIT_AXES)}: one edit "
                       "serves every fine-tuning setting")
        if "layers" in when:
            when["layers"] = parse_layers(when["layers"])
        overrides.append({"when": when, "edit": _mapping(path, f"{key}.edit", ov.get("edit")),
                          "finetune": _mapping(path, f"{key}.finetune", ov.get("finetune"))})

    resources: dict[str, dict[str, float]] = {}
    res_raw = _mapping(path, "resources", raw.get("resources"))
    for kind in RESOURCE_KINDS:
        entry = _mapping(path, f"resources.{kind}", res_raw.pop(kind, None))
        bad = sorted(set(entry) - set(RESOURCE_KEYS))
        if bad:
            raise _err(path, f"resources.{kind}.{bad[0]}", f"unknown key; allowed: {', '.join(RESOURCE_KEYS)}")
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise _err(path, f"resources.{kind}.{k}", "must be a non-negative number")
        resources[kind] = {**DEFAULT_RESOURCES, **entry}
    if res_raw:
        raise _err(path, f"resources.{sorted(res_raw)[0]}", f"unknown stage kind; allowed: {', '.join(RESOURCE_KINDS)}")

    keep = _as_list(path, "keep", raw["keep"]) if raw.get("keep") not in (None, []) else []
    bad_keep = [k for k in keep if k not in KEEP_KINDS]
    if bad_keep:
        raise _err(path, "keep", f"{bad_keep[0]!r} is not a stage kind that stores a model; allowed: "
                   f"{', '.join(KEEP_KINDS)} (edit stages store deltas, LoRA/DoRA stages adapters, unless kept)")
    groups = _as_list(path, "groups", raw["groups"]) if "groups" in raw else list(GROUPS)
    bad_groups = [g for g in groups if g not in GROUPS]
    if bad_groups:
        raise _err(path, "groups", f"unknown group {bad_groups[0]!r}; allowed: {', '.join(GROUPS)}")
    missing = [g for g in REQUIRED_GROUPS if g not in groups]
    if missing:
        raise _err(path, "groups", f"must include {', '.join(REQUIRED_GROUPS)} (decay is measured between them)")
    from editdecay.models.device import resolve_dtype

    dtype = str(resolve_dtype(raw.get("dtype", "float32"), flag=f"{path}: 'dtype'")).replace("torch.", "")
    device = raw.get("device")
    if device is not None and (not isinstance(device, str) or not device.strip()):
        raise _err(path, "device", "must be a torch device name such as cpu, cuda or cuda:1")
    grid = Grid(name=name, path=path, axes=axes, edit=edit, finetune=finetune, evaluate=evaluate,
                overrides=overrides, resources=resources, model_info=model_info, workdir=raw.get("workdir"),
                keep=tuple(keep), slices=slices, groups=tuple(g for g in GROUPS if g in groups), dtype=dtype,
                device=device, raw=raw)

    # every fine-tuning setting combination must make a valid FinetuneConfig (typos fail here, before work)
    for values in grid.runs_values():
        cfg = finetune_settings(grid, values)
        try:
            FinetuneConfig.from_dict({**cfg, "layers": "all"})
        except ConfigError as exc:
            raise ConfigError(f"{path}: 'finetune': {exc}") from None
    for d in dict.fromkeys([*axes["ft_data"], *(d for sl in slices for d in sl["ft_data"])]):
        _check_ft_data(path, d)
    if check_models:
        for m in models:
            info, config = model_facts(m, model_info.get(m, {}), path)
            model_info[m] = info
            grid.configs[m] = model_info[m].get("edit_defaults") or config
            _check_layers(path, grid, m, info["num_layers"])
    for values in grid.runs_values():  # unknown/invalid edit hyperparameters fail here, before any work
        resolved_edit_hparams(grid, values)
    return grid


def _check_downstream(path: str, downstream: Any) -> None:
    from editdecay.data.corpora import COMMONSENSE_TASKS, canonical_task

    if downstream is None:
        return
    tasks = downstream if isinstance(downstream, list) else [downstream]
    for t in tasks:
        if t == "commonsense":
            continue
        try:
            canonical_task(str(t))
        except EditDecayError:
            raise _err(path, "evaluate.downstream", f"unknown task {t!r}; allowed: commonsense, "
                       f"{', '.join(COMMONSENSE_TASKS)}") from None


def _check_ft_data(path: str, name: str) -> None:
    from editdecay.data.corpora import RAW_TEXT

    named = ("commonsense", "alpaca", "hotpotqa", *RAW_TEXT)
    if name in named or name.startswith("commonsense:"):
        return
    if not Path(name).exists():
        raise _err(path, "ft_data", f"{name!r} is neither a named corpus ({', '.join(named)}) nor an existing file")


def model_facts(model: str, declared: dict[str, Any], path: str = "<grid>") -> tuple[dict[str, Any], Any]:
    """({num_layers, params}, config): read from config.json without loading weights (or as declared)."""
    config = _model_config(model, declared, path)
    if config is None:
        info = {"num_layers": int(declared["num_layers"]), "params": float(declared.get("params", SMOLLM2_PARAMS))}
        return {**declared, **info}, None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    d = getattr(text, "hidden_size", None)
    vocab = getattr(text, "vocab_size", 0) or 0
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * (d or 0)
    if layers is None or d is None:
        raise ConfigError(f"{path}: model {model!r}: its config has no num_hidden_layers/hidden_size")
    params = layers * (4 * d * d + 3 * d * inter) + 2 * vocab * d
    return {**declared, "num_layers": int(layers), "params": float(declared.get("params", params))}, config


def _model_config(model: str, declared: dict[str, Any], path: str) -> Any:
    from transformers import AutoConfig

    from editdecay.errors import ModelError
    from editdecay.models.registry import REGISTRY, resolve_model

    if model.startswith(TINY_PREFIX):
        from editdecay.models.tiny import TINY_ARCHS, tiny_config

        arch = model[len(TINY_PREFIX):]
        if arch not in TINY_ARCHS:
            raise _err(path, "models", f"unknown tiny architecture {arch!r}; allowed: "
                       + ", ".join(TINY_PREFIX + a for a in TINY_ARCHS))
        return tiny_config(arch, vocab_size=512, **_tiny_size(declared))
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if model not in REGISTRY and not looks_local and "/" not in model and "num_layers" not in declared:
        # a bare word that is not registered: most likely a typo, not a hub id
        try:
            return AutoConfig.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError):
            raise _err(path, "models", f"unknown model {model!r}; registered models: {', '.join(sorted(REGISTRY))} "
                       "(or give a local folder, a hub id with num_layers, or tiny:<arch>)") from None
    try:
        source = resolve_model(model)
    except ModelError as exc:
        raise _err(path, "models", f"{exc}; registered models: {', '.join(sorted(REGISTRY))}") from None
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if "num_layers" in declared:
            return None  # the grid declares the facts for a hub model not downloaded here (used for planning)
        raise _err(path, "models", f"cannot read config.json of {model!r} ({exc.__class__.__name__}); download "
                   "it, or declare it as {name: ..., num_layers: N, params: P} to plan without it") from None


def _tiny_size(declared: dict[str, Any]) -> dict[str, int]:
    return {"n_layers": int(declared.get("num_layers", 4)), "d_model": int(declared.get("d_model", 64))}


def _check_layers(path: str, grid: Grid, model: str, n_layers: int) -> None:
    for sel in grid.axes["layers"]:
        if isinstance(sel, list) and max(sel) >= n_layers:
            raise _err(path, "layers", f"layer {max(sel)} is out of range for {model!r}, which has {n_layers} "
                       f"layers (0..{n_layers - 1})")
    for values in grid.runs_values():
        if values["model"] != model:
            continue
        edit_layers = resolved_edit_hparams(grid, values)["layers"]
        if edit_layers is not None:
            bad = [i for i in edit_layers if not 0 <= i < n_layers]
            if bad:
                raise _err(path, "edit.layers", f"layer {bad[0]} is out of range for {model!r}, which has "
                           f"{n_layers} layers (0..{n_layers - 1})")
        cfg = finetune_settings(grid, values)
        if "layers" in cfg:
            raise _err(path, "finetune.layers", "is a grid axis: use the top-level 'layers' key")


# ----------------------------------------------------------------------------------------------------------
# settings of one run


def _matches(when: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(stable_hash(values.get(k)) == stable_hash(v) for k, v in when.items())


def edit_settings(grid: Grid, values: dict[str, Any]) -> dict[str, Any]:
    """Edit hyperparameters of a run: grid ``edit`` then every matching override, in file order."""
    out = dict(grid.edit)
    for ov in grid.overrides:
        if ov["edit"] and _matches(ov["when"], values):
            out.update(ov["edit"])
    return out


def resolved_edit_hparams(grid: Grid, values: dict[str, Any]) -> dict[str, Any]:
    """The full edit hyperparameters of a run: the edit stage's per-model defaults, then the grid's settings.

    Resolved at planning so the edit stage id hashes the actual settings and typos fail before any work.
    """
    from editdecay.edit.hparams import resolve_hparams

    settings = edit_settings(grid, values)
    key = stable_hash([values["model"], values["method"], settings])
    if key not in grid._edit_cache:
        try:
            hp = resolve_hparams(values["method"], grid.configs.get(values["model"]), settings)
        except ConfigError as exc:
            raise ConfigError(f"{grid.path}: 'edit' ({values['method']} on {values['model']}): {exc}") from None
        grid._edit_cache[key] = hp.to_dict()
    return grid._edit_cache[key]


def finetune_settings(grid: Grid, values: dict[str, Any]) -> dict[str, Any]:
    """FinetuneConfig settings of a run (without the axes): grid ``finetune`` then matching overrides."""
    out = dict(grid.finetune)
    for ov in grid.overrides:
        if ov["finetune"] and _matches(ov["when"], values):
            out.update(ov["finetune"])
    return out


def _resolve_ft_layers(sel: Any, edit_layers: list[int], n_layers: int, path: str) -> list[int] | str:
    """'edited'/'non-edited' -> explicit lists, so M_ft and M_ed_ft train exactly the same parameters."""
    if sel in ("edited", "non-edited"):
        if sel == "edited":
            return sorted(edit_layers)
        return [i for i in range(n_layers) if i not in set(edit_layers)]
    return sel


# ----------------------------------------------------------------------------------------------------------
# expansion


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
            model_cfg["tiny"] = _tiny_size(grid.model_info.get(model, {}))
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


def _estimate(spec: StageSpec, scale: float) -> float:
    """Rough seconds of one stage on a 2-core CPU: SmolLM2-135M costs times ``scale`` (parameter ratio)."""
    return COST["stage_overhead_s"] + _estimate_work(spec, scale)


def _estimate_work(spec: StageSpec, scale: float) -> float:
    cfg = spec.config
    if spec.kind == "base":
        return COST["base_s"]
    if spec.kind == "stats":
        # in samples mode, each sample is a document cut to mom2_seq_len tokens (an upper bound)
        tokens = cfg["mom2_n_samples"] * cfg["mom2_seq_len"] if cfg.get("mom2_n_samples") else cfg["mom2_n_tokens"]
        return scale * tokens / COST["tokens_per_s"]
    if spec.kind == "targets":
        return scale * cfg["n_edits"] * COST["targets_s_per_edit"]
    if spec.kind == "edit":
        return scale * cfg["n_edits"] * COST["update_s_per_edit"]
    if spec.kind == "finetune":
        ft = cfg["finetune"]
        steps = ft.get("max_steps") or 100
        # commonsense/Alpaca examples average ~90 tokens, so most are shorter than max_length
        tokens = steps * ft.get("batch_size", 4) * ft.get("grad_accum", 1) * min(ft.get("max_length", 256), 96)
        return scale * tokens / COST["train_tokens_per_s"]
    if spec.kind == "evaluate":
        down = cfg.get("downstream")
        n_tasks = 0 if not down else (7 if down == "commonsense" else len(down) if isinstance(down, list) else 1)
        tokens = cfg["n_edits"] * COST["eval_tokens_per_record"] + n_tasks * (cfg.get("limit") or 100) * \
            COST["downstream_tokens_per_item"]
        return scale * tokens / COST["tokens_per_s"]
    return 0.0
