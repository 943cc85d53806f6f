"""Time, peak memory and disk of each planned stage, estimated from model facts before any work starts.

Why: a 7B grid that runs out of memory in its first fine-tune, or fills the disk at its 300th stage, wastes
hours. :func:`estimate_stage` turns a stage's kind and settings plus the model's shape (hidden size,
intermediate size, layers, vocabulary, parameters) into a peak-memory and a disk figure with their parts;
:func:`check_plan_resources` compares them with the grid's ``resources:`` (``memory_gb``), this machine's
RAM (CPU stages) or GPU memory (GPU stages, where one is present) and the free disk of the work folder.

Time (:func:`estimate_seconds`): per-stage costs of SmolLM2-135M on a 2-core CPU (:data:`COST`), scaled by
the model's parameter count. Memory and disk: the estimates are deliberately simple upper-bound sums (documented per part), not measurements:

- weights: parameters × bytes of the stage's dtype (float32 unless the stage or grid names one);
- full fine-tuning: + gradients (model dtype) + AdamW's two float32 states, for the trained parameters
  (the selected layers' projections and norms; embeddings only with ``train_extra``);
- LoRA/DoRA: + adapter weights, gradients and AdamW states (float32) for r·(in+out) per adapted projection;
- training activations: per token and layer (12·d + 4·f) values kept for the backward pass, attention
  probabilities batch·heads·T², and float32 logits with their log-softmax and gradient (3·tokens·V);
- statistics: one d_k×d_k accumulator per edited layer (mom2_dtype) plus the batch's gram;
- targets: the z optimisation's graph for one chunk of requests (z_batch_size × (templates + 1) prompts,
  GRAD_TOKENS positions each, the layers above the last edited one), its float32 logits at the target
  positions, and the cached keys/values of the prompts' prefixes;
- edit: the d_k×d_k statistics of every edited layer in float64, the float64 solve (system matrix, its
  factor and the product: 3·d_k²), AlphaEdit's projection and accumulated K_pK_pᵀ per layer plus one
  eigendecomposition's workspace ((2·layers + 2)·d_k²), and the cached hidden states of every prompt;
- disk: stats d_k(d_k+1)/2 × mom2 bytes per layer (the upper triangle); edit deltas per layer min(d×d_k float32, n(d + d_k) float64 factors) (+ weights with ``keep:``);
  LoRA/DoRA the adapter (+ merged weights with ``keep:``); full fine-tunes nothing but logs unless kept;
  targets one d-vector per request; evaluations a JSON of per-record metrics.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editdecay.experiment.facts import SMOLLM2_PARAMS, model_facts

# rough 2-core-CPU costs of SmolLM2-135M, scaled by parameter count for other models (plan estimates only).
# targets_s_per_edit: the 25-step target optimisation with the context templates (8.4 s/edit, batched, one thread:
# benchmarks/bench_edit.py); update_s_per_edit: keys and the layer-by-layer solve (~50 s per 100 edits); train
# tokens/s: LoRA steps of batch 4 (forward + backward + optimiser)
COST = {"stage_overhead_s": 2.0, "base_s": 3.0, "tokens_per_s": 530.0, "train_tokens_per_s": 60.0,
        "targets_s_per_edit": 8.4, "update_s_per_edit": 0.5, "eval_tokens_per_record": 120,
        "downstream_tokens_per_item": 400}
GB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
PROMPT_TOKENS = 32  # a context template plus a CounterFact prompt, in tokens (edit/targets estimates)
GRAD_TOKENS = 12  # positions of a prompt from the subject's last token on: the z optimisation's graph
TARGET_TOKENS = 4  # target tokens whose logits the z loss reads, per prompt
# published config.json facts of the study's models, for planning on a machine that has not downloaded them
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-xl": dict(model_type="gpt2", hidden=1600, intermediate=6400, vocab=50257, heads=25, kv_dim=1600),
    "EleutherAI/gpt-j-6b": dict(model_type="gptj", hidden=4096, intermediate=16384, vocab=50400, heads=16,
                                kv_dim=4096),
    "meta-llama/Llama-2-7b-hf": dict(model_type="llama", hidden=4096, intermediate=11008, vocab=32000, heads=32,
                                     kv_dim=4096),
    "meta-llama/Llama-3.1-8B-Instruct": dict(model_type="llama", hidden=4096, intermediate=14336, vocab=128256,
                                             heads=32, kv_dim=1024),
}


@dataclass
class ModelShape:
    name: str
    model_type: str
    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_dim: int
    params: float
    source: str  # where the facts come from: config.json | grid | published config table

    def projections(self) -> dict[str, tuple[str, int, int]]:
        """Projection name (last path part) -> (group attn|mlp, in, out) of one decoder layer."""
        d, f, kv = self.hidden, self.intermediate, self.kv_dim
        if self.model_type == "gpt2":
            return {"c_attn": ("attn", d, 3 * d), "attn.c_proj": ("attn", d, d), "c_fc": ("mlp", d, f),
                    "c_proj": ("mlp", f, d)}
        if self.model_type == "gptj":
            return {"q_proj": ("attn", d, d), "k_proj": ("attn", d, d), "v_proj": ("attn", d, d),
                    "out_proj": ("attn", d, d), "fc_in": ("mlp", d, f), "fc_out": ("mlp", f, d)}
        if self.model_type == "gpt_neox":
            return {"query_key_value": ("attn", d, 3 * d), "dense": ("attn", d, d),
                    "dense_h_to_4h": ("mlp", d, f), "dense_4h_to_h": ("mlp", f, d)}
        return {"q_proj": ("attn", d, d), "k_proj": ("attn", d, kv), "v_proj": ("attn", d, kv),
                "o_proj": ("attn", d, d), "gate_proj": ("mlp", d, f), "up_proj": ("mlp", d, f),
                "down_proj": ("mlp", f, d)}

    def layer_params(self) -> int:
        return sum(i * o for _, i, o in self.projections().values()) + 4 * self.hidden  # + norms


@dataclass
class StageCost:
    stage_id: str
    kind: str
    model: str
    memory: float  # bytes, estimated peak
    disk: float  # bytes written
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def model_shape(plan: Any, model: str, _cache: dict[str, ModelShape] | None = None) -> ModelShape:
    """The shape of ``model`` from its config (read as planning did), the grid's declared facts
    (hidden_size, intermediate_size, vocab_size, num_attention_heads, kv_dim) or the published table."""
    grid = plan.grid
    declared = dict(grid.model_info.get(model, {}))
    info, config = model_facts(model, declared, grid.path)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        d = int(getattr(text, "hidden_size", None) or text.n_embd)
        heads = int(getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None) or 1)
        head_dim = int(getattr(text, "head_dim", None) or d // heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        f = int(getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * d)
        return ModelShape(model, str(text.model_type), int(info["num_layers"]), d, f, int(text.vocab_size), heads,
                          kv_heads * head_dim, float(info["params"]), "config.json")
    facts = {**KNOWN_SHAPES.get(model, {})}
    source = "published config table" if facts else "grid"
    for key, name in (("hidden", "hidden_size"), ("intermediate", "intermediate_size"), ("vocab", "vocab_size"),
                      ("heads", "num_attention_heads"), ("kv_dim", "kv_dim"), ("model_type", "model_type")):
        if name in declared:
            facts[key], source = declared[name], "grid"
    missing = [k for k in ("hidden", "intermediate", "vocab") if k not in facts]
    if missing:
        from editdecay.errors import ConfigError

        raise ConfigError(f"{grid.path}: models: {model!r}: cannot estimate memory without hidden_size, "
                          "intermediate_size and vocab_size; download it or declare them in its models entry")
    heads = int(facts.get("heads", max(1, int(facts["hidden"]) // 128)))
    return ModelShape(model, str(facts.get("model_type", "llama")), int(info["num_layers"]), int(facts["hidden"]),
                      int(facts["intermediate"]), int(facts["vocab"]), heads, int(facts.get("kv_dim", facts["hidden"])),
                      float(info["params"]), source)


def stage_dtype(spec: Any, grid: Any = None) -> str:
    """The dtype a stage loads its model in: the stage's ``dtype``, its fine-tuning or edit settings', the
    grid's, else float32 (what models load in today)."""
    cfg = spec.config
    for where in (cfg, cfg.get("finetune") or {}, cfg.get("hparams") or {}, cfg.get("z") or {}):
        if isinstance(where, dict) and where.get("dtype"):
            return str(where["dtype"])
    return str(getattr(grid, "dtype", None) or "float32")


def _bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(str(dtype).replace("torch.", ""), 4)


def _train_activations(s: ModelShape, batch: int, seq: int, layers: int, b: int) -> dict[str, float]:
    tokens = batch * seq
    return {"activations": tokens * layers * (12 * s.hidden + 4 * s.intermediate) * b
            + batch * s.heads * seq * seq * layers * b,
            "logits": 3.0 * tokens * s.vocab * 4}


def _forward(s: ModelShape, batch: int, seq: int, b: int) -> float:
    """Peak temporaries of one no-grad forward: a layer's working set plus its attention scores."""
    return batch * seq * (4 * s.hidden + 3 * s.intermediate) * b + batch * s.heads * seq * seq * b


def _trained_layers(ft: dict[str, Any], s: ModelShape) -> int:
    layers = ft.get("layers", "all")
    return len(layers) if isinstance(layers, list) else s.num_layers


def _adapted(ft: dict[str, Any], s: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of every projection one layer's LoRA/DoRA adapts, from the ``modules`` selection."""
    items = [m.strip() for m in str(ft.get("modules", "attn,mlp")).split(",") if m.strip()]
    out = []
    for name, (group, i, o) in s.projections().items():
        if group in items or name in items or name.rsplit(".", 1)[-1] in items:
            out.append((i, o))
    return out


def estimate_stage(spec: Any, s: ModelShape, grid: Any = None) -> StageCost:
    """Peak memory and disk of one stage (see the module docstring for every part)."""
    from editdecay.edit.registry import get_method
    from editdecay.finetune.config import FinetuneConfig

    dtype = stage_dtype(spec, grid)
    b = _bytes(dtype)
    cfg = spec.config
    weights = s.params * b
    parts: dict[str, float] = {f"weights ({dtype})": weights}
    notes: list[str] = []
    disk: dict[str, float] = {}
    d, f = s.hidden, s.intermediate
    if spec.kind == "base":
        from editdecay.models.registry import REGISTRY

        name = str(cfg.get("model", ""))
        if name.startswith("tiny:"):
            disk["model"] = weights
        elif name in REGISTRY:
            notes.append("a registered model is converted from its GGUF file once, into $EDITDECAY_HOME")
        else:
            parts = {}  # a folder or hub id is only resolved: nothing is loaded
    elif spec.kind == "stats":
        n_layers = len(cfg.get("layers") or [])
        acc = _bytes(cfg.get("mom2_dtype", "float64"))
        parts["forward"] = _forward(s, 8, int(cfg.get("mom2_seq_len", 256)), b)
        parts["second moments"] = n_layers * f * f * acc + f * f * b
        disk["second moments"] = n_layers * f * (f + 1) // 2 * acc  # stored as the upper triangle
    elif spec.kind in ("targets", "edit"):
        hp = cfg.get("z") or cfg.get("hparams") or {}
        n_edits = int(cfg.get("n_edits") or 0)
        templates = 1 + sum(int(c) for _, c in hp.get("context_template_length_params") or [[10, 5]])
        layers = hp.get("layers") or []
        cached = n_edits * templates * PROMPT_TOKENS * d * b  # hidden states of every prompt at the entry layer
        if spec.kind == "targets":
            chunk = int(hp.get("z_batch_size", 16)) * (templates + 1)
            above = max(1, s.num_layers - 1 - (max(layers) if layers else 0))  # the graph runs above layer L
            parts["z optimisation"] = (chunk * GRAD_TOKENS * above * (12 * d + 4 * f) * 4
                                       + 3.0 * chunk * TARGET_TOKENS * s.vocab * 4
                                       + chunk * PROMPT_TOKENS * 2 * s.kv_dim * s.num_layers * b)
            disk["target values"] = n_edits * d * 4 * 2
        else:
            parts["statistics (float64)"] = len(layers) * f * f * 8
            parts["solve (float64)"] = 3 * f * f * 8
            parts["keys and prompt states"] = cached + n_edits * (f + d) * 8
            # dense float32, or each batch's exact float64 factors where smaller (editdecay.deltas)
            disk["deltas"] = len(layers) * min(d * f * 4, n_edits * (d + f) * 8)
            method = get_method(cfg["method"]) if cfg.get("method") else None
            if method is not None and method.state_cost is not None:
                extra_peak, extra_disk = method.state_cost(len(layers), f)
                parts.update(extra_peak)
                disk.update(extra_disk)
            if cfg.get("keep_model"):
                disk["model copy (keep)"] = weights
        disk["manifest"] = n_edits * 2048
    elif spec.kind == "finetune":
        ft = FinetuneConfig.from_dict({**cfg["finetune"], "layers": "all"})
        raw_ft = cfg["finetune"]
        n_train = _trained_layers(raw_ft, s)
        parts.update(_train_activations(s, ft.batch_size, ft.max_length, s.num_layers, b))
        if ft.type == "full":
            trained = n_train * s.layer_params() + (2 * s.vocab * d if set(ft.train_extra) & {"embed", "unembed"} else 0)
            parts["gradients"] = trained * b
            parts["AdamW states (2 x float32)"] = trained * 8
            if cfg.get("keep_model"):
                disk["model (keep)"] = weights
        else:
            adapted = _adapted(raw_ft, s)
            n_adapter = n_train * sum(ft.r * (i + o) + (o if ft.type == "dora" else 0) for i, o in adapted)
            parts["adapter + gradients + AdamW (float32)"] = n_adapter * 16
            disk["adapter"] = n_adapter * 4
            if cfg.get("keep_model"):
                disk["merged model (keep)"] = weights
        disk["logs and trajectory"] = 1e6
    elif spec.kind == "evaluate":
        batch = int(cfg.get("batch_size") or 32)
        parts["forward"] = _forward(s, batch, 256, b)
        parts["logits (kept positions, float32)"] = 2.0 * batch * 16 * s.vocab * 4
        disk["evaluation.json"] = int(cfg.get("n_edits") or 0) * 1024 + 65536
    else:
        notes.append(f"no estimate for stage kind {spec.kind!r}: counted as 0")
        parts, disk = {}, {}
    return StageCost(spec.stage_id, spec.kind, s.name, sum(parts.values()), sum(disk.values()),
                     {**parts, **{f"disk: {k}": v for k, v in disk.items()}}, notes)


def estimate_plan(plan: Any) -> list[StageCost]:
    """One :class:`StageCost` per distinct stage of the plan, in plan order."""
    shapes: dict[str, ModelShape] = {}
    out = []
    for sid, spec in plan.stages.items():
        model = plan.stage_model.get(sid, "")
        if model not in shapes:
            shapes[model] = model_shape(plan, model)
        out.append(estimate_stage(spec, shapes[model], plan.grid))
    return out


def by_kind(costs: list[StageCost]) -> dict[str, dict[str, Any]]:
    """kind -> {"peak": max memory, "disk": total disk, "stages": n, "worst": the StageCost of the peak}."""
    out: dict[str, dict[str, Any]] = {}
    for c in costs:
        e = out.setdefault(c.kind, {"peak": 0.0, "disk": 0.0, "stages": 0, "worst": c})
        e["stages"] += 1
        e["disk"] += c.disk
        if c.memory > e["peak"] or e["stages"] == 1:
            e["peak"], e["worst"] = c.memory, c
    return out


def machine_memory() -> float:
    """This machine's RAM in bytes (psutil, else /proc/meminfo)."""
    try:
        import psutil

        return float(psutil.virtual_memory().total)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    raise OSError("cannot read this machine's memory (no psutil, no /proc/meminfo)")


def gpu_memory() -> float | None:
    """Total memory of the first GPU in bytes, or None where there is none."""
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no usable GPU is the same as none
        return None
    return None


def _gb(x: float) -> str:
    if abs(x) < 2 ** 20:
        return f"{x / 1024:.0f} KB"
    return f"{x / 2 ** 20:.0f} MB" if abs(x) < GB else f"{x / GB:.1f} GB"


def check_plan_resources(plan: Any, workdir: str | Path | None = None, check_machine: bool = True,
                         costs: list[StageCost] | None = None) -> list[str]:
    """Problems (one message per stage kind and limit, naming the worst stage and the shortfall); [] = fits.

    Declared ``resources.<kind>.memory_gb`` (when > 0) always; with ``check_machine``, CPU stages against this
    machine's RAM and GPU stages against its GPU (unchecked where it has none); with ``workdir``, the total
    disk against the free space there.
    """
    costs = estimate_plan(plan) if costs is None else costs
    problems = []
    ram = machine_memory() if check_machine else None
    gpu = gpu_memory() if check_machine else None
    for kind, e in by_kind(costs).items():
        worst: StageCost = e["worst"]
        res = plan.stages[worst.stage_id].resources
        where = f"stage {worst.stage_id} ({kind}, {worst.model})"
        declared = float(res.get("memory_gb") or 0) * GB
        if declared and e["peak"] > declared:
            problems.append(f"{where}: estimated peak memory {_gb(e['peak'])} exceeds resources.{kind}.memory_gb = "
                            f"{declared / GB:g} (short by {_gb(e['peak'] - declared)})")
        if float(res.get("num_gpus") or 0) > 0:
            limit, what = gpu, "this machine's GPU memory"
        else:
            limit, what = ram, "this machine's RAM"
        if limit is not None and e["peak"] > limit:
            problems.append(f"{where}: estimated peak memory {_gb(e['peak'])} exceeds {what} {_gb(limit)} "
                            f"(short by {_gb(e['peak'] - limit)})")
    if workdir is not None:
        total = sum(c.disk for c in costs)
        probe = Path(workdir).expanduser().resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = float(shutil.disk_usage(probe).free)
        if total > free:
            problems.append(f"work folder {workdir}: the stages write an estimated {_gb(total)} but {probe} has "
                            f"{_gb(free)} free (short by {_gb(total - free)})")
    return problems


def ensure_plan_fits(plan: Any, workdir: str | Path | None = None, check_machine: bool = True,
                     costs: list[StageCost] | None = None) -> None:
    """Refuse a plan that does not fit, before any work: ConfigError listing every problem."""
    problems = check_plan_resources(plan, workdir, check_machine, costs)
    if problems:
        from editdecay.errors import ConfigError

        raise ConfigError(f"{plan.grid.path}: the grid does not fit (estimates; editdecay plan shows them):\n  "
                          + "\n  ".join(problems))


# ----------------------------------------------------------------------------------------------------------
# time


def estimate_seconds(plan: Any) -> dict[str, float]:
    """Rough seconds per stage kind from the :data:`COST` constants (for `editdecay plan`)."""
    out: dict[str, float] = {}
    for spec in plan.stages.values():
        out[spec.kind] = out.get(spec.kind, 0.0) + planned_stage_seconds(plan, spec.stage_id)
    return out


def planned_stage_seconds(plan: Any, stage_id: str) -> float:
    """Rough seconds of one planned stage, scaled by its model's parameter count relative to SmolLM2."""
    model = plan.stage_model.get(stage_id, "")
    scale = plan.grid.model_info.get(model, {}).get("params", SMOLLM2_PARAMS) / SMOLLM2_PARAMS
    return estimate_stage_seconds(plan.stages[stage_id], scale)


def estimate_stage_seconds(spec: Any, scale: float) -> float:
    """Rough seconds of one stage on a 2-core CPU: SmolLM2-135M costs times ``scale`` (parameter ratio)."""
    return COST["stage_overhead_s"] + _work_seconds(spec, scale)


def _work_seconds(spec: Any, scale: float) -> float:
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
