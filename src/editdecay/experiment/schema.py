"""The grid file: YAML -> a validated :class:`Grid`, and the settings of each run it describes.

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

Every problem raises ConfigError naming the file and the key (:func:`key_error`). :func:`parse_grid` is a
sequence of small validators, one per key or group of keys, run in file-documentation order.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editdecay.edit.registry import method_names
from editdecay.errors import ConfigError, EditDecayError
from editdecay.experiment.facts import key_error, model_facts
from editdecay.experiment.store import STAGE_KINDS  # the stage kinds: defined once
from editdecay.groups import GROUPS  # the four groups: defined once
from editdecay.preserve import STRATEGIES as PRESERVE  # the preserve strategies: defined once
from editdecay.util.io import stable_hash
from editdecay.util.overrides import load_yaml

AXES = {  # YAML key -> the run field it fills
    "models": "model", "methods": "method", "edit_data": "edit_data", "n_edits": "n_edits",
    "ft_types": "ft_type", "layers": "layers", "modules": "modules", "ft_data": "ft_data", "seeds": "seed",
    "preserve": "preserve",
}
TOP_KEYS = set(AXES) | {"name", "description", "workdir", "edit", "finetune", "evaluate", "overrides", "resources",
                        "model_info", "stats", "keep", "slices", "groups", "dtype", "device"}
KEEP_KINDS = ("edit", "finetune")
REQUIRED_GROUPS = ("M_ed", "M_ed_ft")  # decay is M_ed -> M_ed_ft: every run measures these
EVALUATE_KEYS = {"downstream": None, "limit": 20, "seed": 0, "mode": "loglik", "batch_size": 32, "fluency": False}
# what an edit may depend on. Not the seed: the study edits once and varies only the fine-tuning seed, so every
# seed of a run fine-tunes the same edited model (the context templates use plan.EDIT_SEED)
EDIT_AXES = ("model", "method", "edit_data", "n_edits")
RESOURCE_KINDS = STAGE_KINDS  # every stage kind may declare resources
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory_gb")
DEFAULT_RESOURCES = {"num_cpus": 1, "num_gpus": 0, "memory_gb": 0}
EDIT_PARTS = ("stats", "targets")  # stages split out of an edit: without their own resources, they take the edit's
FT_AXIS_KEYS = {"type": "ft_types", "layers": "layers", "modules": "modules", "data": "ft_data", "seed": "seeds"}


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
    description: str = ""  # what the grid is for, in words; shown at the top of its report
    keep: tuple[str, ...] = ()  # stage kinds that keep a full model copy ("edit", "finetune")
    slices: list[dict[str, list[Any]]] = field(default_factory=list)  # each: the axes of one product
    groups: tuple[str, ...] = GROUPS  # which of the four models each run measures
    dtype: str = "float32"  # what every stage loads the model in (part of each stage's id when not float32)
    device: str | None = None  # where stages run (not part of any id: the same work on another device)
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
# loading


def load_grid(path: str | os.PathLike, check_models: bool = True) -> Grid:
    """Read and validate a grid file; every problem raises ConfigError naming the file and the key."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: grid file not found")
    try:
        # YAML 1.2 core scalars, as in --set and --hparams: `lr: 2e-4` is a number, not the string '2e-4'
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_grid(raw, str(path), check_models=check_models)


def parse_grid(raw: Any, path: str = "<grid>", check_models: bool = True) -> Grid:
    """Validate a loaded grid mapping (see the module docstring for the keys)."""
    _check_top_keys(path, raw)
    name = _parse_name(path, raw)
    model_info = _mapping(path, "model_info", raw.get("model_info"))
    axes = _parse_axes(path, raw, model_info)
    slices = _parse_slices(path, raw, model_info)
    grid = Grid(name=name, path=path, axes=axes, edit=_mapping(path, "edit", raw.get("edit")),
                finetune=_parse_finetune(path, raw), evaluate=_parse_evaluate(path, raw),
                overrides=_parse_overrides(path, raw), resources=_parse_resources(path, raw),
                model_info=model_info, workdir=raw.get("workdir"), description=_parse_description(path, raw),
                keep=_parse_keep(path, raw), slices=slices,
                groups=_parse_groups(path, raw), dtype=_parse_dtype(path, raw), device=_parse_device(path, raw))
    _check_finetune_configs(grid)
    for d in dict.fromkeys([*axes["ft_data"], *(d for sl in slices for d in sl["ft_data"])]):
        _check_ft_data(path, d)
    if check_models:
        _read_models(grid)
    for values in grid.runs_values():  # unknown/invalid edit hyperparameters fail here, before any work
        resolved_edit_hparams(grid, values)
    return grid


# ----------------------------------------------------------------------------------------------------------
# small validators, one per key (each raises key_error naming the file and the key)


def _as_list(path: str, key: str, value: Any) -> list[Any]:
    if value is None:
        raise key_error(path, key, "is required (a value or a list of values)")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise key_error(path, key, "must not be empty")
    return values


def _mapping(path: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise key_error(path, key, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _check_top_keys(path: str, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid file must be a YAML mapping of keys ({', '.join(sorted(TOP_KEYS))})")
    unknown = sorted(set(map(str, raw)) - TOP_KEYS)
    if unknown:
        raise key_error(path, unknown[0], f"unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")


def _parse_description(path: str, raw: dict[str, Any]) -> str:
    text = raw.get("description") or ""
    if not isinstance(text, str):
        raise key_error(path, "description", "must be text (what the grid is for, shown in its report)")
    return " ".join(text.split())


def _parse_name(path: str, raw: dict[str, Any]) -> str:
    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise key_error(path, "name", "must be a word of letters, digits, '-' and '_'")
    return name


def _one_of(path: str, key: str, values: list[Any], allowed: tuple[str, ...], what: str) -> list[str]:
    """Lower-cased values, each in ``allowed`` (``what`` names one value in the error)."""
    out = [str(v).lower() for v in values]
    for v in out:
        if v not in allowed:
            raise key_error(path, key, f"unknown {what} {v!r}; allowed: {', '.join(allowed)}")
    return out


def _parse_models(path: str, raw: dict[str, Any], model_info: dict[str, Any]) -> list[str]:
    models = []
    for i, m in enumerate(_as_list(path, "models", raw.get("models"))):
        if isinstance(m, dict):  # {name: ..., num_layers: ..., params: ...} for hub ids not on this machine
            if "name" not in m:
                raise key_error(path, f"models[{i}]", "a model mapping needs 'name' (and may give num_layers, params)")
            model_info.setdefault(str(m["name"]), {}).update({k: v for k, v in m.items() if k != "name"})
            m = m["name"]
        if not isinstance(m, str) or not m.strip():
            raise key_error(path, f"models[{i}]", "must be a model name, folder or tiny:<arch>")
        models.append(m)
    return models


def _integers(path: str, key: str, values: list[Any], positive: bool) -> list[int]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or (positive and v < 1):
            raise key_error(path, key, f"{v!r} is not {'a positive integer' if positive else 'an integer'}")
    return values


def _parse_layer_selections(path: str, raw: dict[str, Any]) -> list[Any]:
    from editdecay.finetune.config import parse_layer_setting

    out = []
    for sel in _as_list(path, "layers", raw.get("layers", ["all"])):
        try:
            out.append(parse_layer_setting(sel))
        except ConfigError as exc:
            hint = " (each entry is one selection: write [[4, 5]] or ['4-5'] for layers 4 and 5 together)" \
                if isinstance(sel, int) else ""
            raise key_error(path, "layers", f"{exc}{hint}") from None
    return out


def _parse_axes(path: str, raw: dict[str, Any], model_info: dict[str, Any]) -> dict[str, list[Any]]:
    """The axes of a grid (or of one slice: ``path`` then names it), each a validated list of values."""
    from editdecay.finetune.config import FT_TYPES

    axes: dict[str, list[Any]] = {
        "models": _parse_models(path, raw, model_info),
        "methods": _one_of(path, "methods", _as_list(path, "methods", raw.get("methods")), method_names(),
                           "method"),
        "edit_data": [str(d) for d in _as_list(path, "edit_data", raw.get("edit_data"))],
        "n_edits": _integers(path, "n_edits", _as_list(path, "n_edits", raw.get("n_edits")), positive=True),
        "ft_types": _one_of(path, "ft_types", _as_list(path, "ft_types", raw.get("ft_types")), FT_TYPES,
                            "fine-tuning type"),
        "layers": _parse_layer_selections(path, raw),
        "modules": [str(m) for m in _as_list(path, "modules", raw.get("modules", ["attn,mlp"]))],
        "ft_data": [str(d) for d in _as_list(path, "ft_data", raw.get("ft_data", ["commonsense"]))],
        "seeds": _integers(path, "seeds", _as_list(path, "seeds", raw.get("seeds", [0])), positive=False),
        "preserve": _one_of(path, "preserve", _as_list(path, "preserve", raw.get("preserve", ["none"])), PRESERVE,
                            "strategy"),
    }
    for key, values in axes.items():
        keys = [stable_hash(v) for v in values]
        if len(set(keys)) != len(keys):
            raise key_error(path, key, f"lists a value twice: {values}")
    return axes


def _parse_slices(path: str, raw: dict[str, Any], model_info: dict[str, Any]) -> list[dict[str, list[Any]]]:
    """``slices:``: each entry replaces some axes of the top-level grid; the runs are the union of the slices'
    products (a run in two slices is one run), so one file can mirror a study whose grid is not one product."""
    entries = raw.get("slices")
    if entries is None:
        return []
    if not isinstance(entries, list) or not entries:
        raise key_error(path, "slices", "must be a non-empty list of mappings of axis keys")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise key_error(path, f"slices[{i}]", f"must be a mapping of axis keys ({', '.join(AXES)})")
        bad = sorted(set(entry) - set(AXES) - {"name"})
        if bad:
            raise key_error(path, f"slices[{i}].{bad[0]}",
                            f"unknown key; a slice sets axes: {', '.join(AXES)} (and name)")
        merged = {**{k: raw[k] for k in AXES if k in raw}, **{k: v for k, v in entry.items() if k != "name"}}
        out.append(_parse_axes(f"{path}: slices[{i}]", merged, model_info))
    return out


def _parse_finetune(path: str, raw: dict[str, Any]) -> dict[str, Any]:
    finetune = _mapping(path, "finetune", raw.get("finetune"))
    for reserved, axis in FT_AXIS_KEYS.items():
        if reserved in finetune:
            raise key_error(path, f"finetune.{reserved}", f"is a grid axis: set it with the top-level '{axis}' key")
    return finetune


def _parse_evaluate(path: str, raw: dict[str, Any]) -> dict[str, Any]:
    evaluate = _mapping(path, "evaluate", raw.get("evaluate"))
    bad = sorted(set(evaluate) - set(EVALUATE_KEYS))
    if bad:
        raise key_error(path, f"evaluate.{bad[0]}", f"unknown key; allowed: {', '.join(EVALUATE_KEYS)}")
    evaluate = {**EVALUATE_KEYS, **evaluate}
    _check_downstream(path, evaluate["downstream"])
    return evaluate


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
            raise key_error(path, "evaluate.downstream", f"unknown task {t!r}; allowed: commonsense, "
                            f"{', '.join(COMMONSENSE_TASKS)}") from None


def _parse_override(path: str, key: str, ov: Any) -> dict[str, Any]:
    from editdecay.finetune.config import parse_layer_setting

    if not isinstance(ov, dict):
        raise key_error(path, key, "must be a mapping with 'when' and 'edit'/'finetune'")
    extra = sorted(set(ov) - {"when", "edit", "finetune"})
    if extra:
        raise key_error(path, f"{key}.{extra[0]}", "unknown key; allowed: when, edit, finetune")
    when = _mapping(path, f"{key}.when", ov.get("when"))
    for wk in when:
        if wk not in AXES.values():
            raise key_error(path, f"{key}.when.{wk}", f"unknown axis; allowed: {', '.join(AXES.values())}")
    if ov.get("edit") and set(when) - set(EDIT_AXES):
        raise key_error(path, f"{key}.when", f"an edit override may only depend on {', '.join(EDIT_AXES)}: one "
                        "edit serves every fine-tuning setting")
    if "layers" in when:
        when["layers"] = parse_layer_setting(when["layers"])
    return {"when": when, "edit": _mapping(path, f"{key}.edit", ov.get("edit")),
            "finetune": _mapping(path, f"{key}.finetune", ov.get("finetune"))}


def _parse_overrides(path: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [_parse_override(path, f"overrides[{i}]", ov) for i, ov in enumerate(raw.get("overrides") or [])]


def _parse_resources(path: str, raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    resources: dict[str, dict[str, float]] = {}
    declared: set[str] = set()
    res_raw = _mapping(path, "resources", raw.get("resources"))
    for kind in RESOURCE_KINDS:
        entry = _mapping(path, f"resources.{kind}", res_raw.pop(kind, None))
        bad = sorted(set(entry) - set(RESOURCE_KEYS))
        if bad:
            raise key_error(path, f"resources.{kind}.{bad[0]}", f"unknown key; allowed: {', '.join(RESOURCE_KEYS)}")
        for k, v in entry.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise key_error(path, f"resources.{kind}.{k}", "must be a non-negative number")
        resources[kind] = {**DEFAULT_RESOURCES, **entry}
        if entry:
            declared.add(kind)
    if res_raw:
        raise key_error(path, f"resources.{sorted(res_raw)[0]}",
                        f"unknown stage kind; allowed: {', '.join(RESOURCE_KINDS)}")
    for kind in EDIT_PARTS:  # split out of the edit: they run on what it declares unless given their own
        if kind not in declared and "edit" in declared:
            resources[kind] = dict(resources["edit"])
    return resources


def _parse_keep(path: str, raw: dict[str, Any]) -> tuple[str, ...]:
    keep = _as_list(path, "keep", raw["keep"]) if raw.get("keep") not in (None, []) else []
    bad = [k for k in keep if k not in KEEP_KINDS]
    if bad:
        raise key_error(path, "keep", f"{bad[0]!r} is not a stage kind that stores a model; allowed: "
                        f"{', '.join(KEEP_KINDS)} (edit stages store deltas, LoRA/DoRA stages adapters, unless kept)")
    return tuple(keep)


def _parse_groups(path: str, raw: dict[str, Any]) -> tuple[str, ...]:
    groups = _as_list(path, "groups", raw["groups"]) if "groups" in raw else list(GROUPS)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise key_error(path, "groups", f"unknown group {bad[0]!r}; allowed: {', '.join(GROUPS)}")
    missing = [g for g in REQUIRED_GROUPS if g not in groups]
    if missing:
        raise key_error(path, "groups", f"must include {', '.join(REQUIRED_GROUPS)} (decay is measured between them)")
    return tuple(g for g in GROUPS if g in groups)


def _parse_dtype(path: str, raw: dict[str, Any]) -> str:
    from editdecay.models.device import resolve_dtype

    return str(resolve_dtype(raw.get("dtype", "float32"), flag=f"{path}: 'dtype'")).replace("torch.", "")


def _parse_device(path: str, raw: dict[str, Any]) -> str | None:
    device = raw.get("device")
    if device is not None and (not isinstance(device, str) or not device.strip()):
        raise key_error(path, "device", "must be a torch device name such as cpu, cuda or cuda:1")
    return device


def _check_finetune_configs(grid: Grid) -> None:
    """Every fine-tuning setting combination must make a valid FinetuneConfig (typos fail here, before work)."""
    from editdecay.finetune.config import FinetuneConfig

    for values in grid.runs_values():
        cfg = finetune_settings(grid, values)
        try:
            FinetuneConfig.from_dict({**cfg, "layers": "all"})
        except ConfigError as exc:
            raise ConfigError(f"{grid.path}: 'finetune': {exc}") from None


def _check_ft_data(path: str, name: str) -> None:
    from editdecay.data.corpora import RAW_TEXT

    named = ("commonsense", "alpaca", "hotpotqa", *RAW_TEXT)
    if name in named or name.startswith("commonsense:"):
        return
    if not Path(name).exists():
        raise key_error(path, "ft_data", f"{name!r} is neither a named corpus ({', '.join(named)}) nor an existing file")


def _read_models(grid: Grid) -> None:
    """Each model's facts (layers, parameters) and config, then the layer selections checked against them."""
    models = list(dict.fromkeys([*grid.axes["models"], *(m for sl in grid.slices for m in sl["models"])]))
    for m in models:
        info, config = model_facts(m, grid.model_info.get(m, {}), grid.path)
        grid.model_info[m] = info
        grid.configs[m] = grid.model_info[m].get("edit_defaults") or config
        _check_layers(grid.path, grid, m, info["num_layers"])


def _check_layers(path: str, grid: Grid, model: str, n_layers: int) -> None:
    for sel in grid.axes["layers"]:
        if isinstance(sel, list) and max(sel) >= n_layers:
            raise key_error(path, "layers", f"layer {max(sel)} is out of range for {model!r}, which has {n_layers} "
                            f"layers (0..{n_layers - 1})")
    for values in grid.runs_values():
        if values["model"] != model:
            continue
        edit_layers = resolved_edit_hparams(grid, values)["layers"]
        if edit_layers is not None:
            bad = [i for i in edit_layers if not 0 <= i < n_layers]
            if bad:
                raise key_error(path, "edit.layers", f"layer {bad[0]} is out of range for {model!r}, which has "
                                f"{n_layers} layers (0..{n_layers - 1})")
        cfg = finetune_settings(grid, values)
        if "layers" in cfg:
            raise key_error(path, "finetune.layers", "is a grid axis: use the top-level 'layers' key")


# ----------------------------------------------------------------------------------------------------------
# settings of one run


def _matches(when: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(stable_hash(values.get(k)) == stable_hash(v) for k, v in when.items())


def _section_settings(grid: Grid, values: dict[str, Any], section: str) -> dict[str, Any]:
    """A run's settings of one grid section (``edit`` or ``finetune``): the grid's section, then the section of
    every override whose ``when`` matches the run, in file order."""
    out = dict(getattr(grid, section))
    for ov in grid.overrides:
        if ov[section] and _matches(ov["when"], values):
            out.update(ov[section])
    return out


def edit_settings(grid: Grid, values: dict[str, Any]) -> dict[str, Any]:
    """Edit hyperparameters of a run: grid ``edit`` then every matching override, in file order."""
    return _section_settings(grid, values, "edit")


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
    return _section_settings(grid, values, "finetune")
