"""Re-edit: after fine-tuning, solve the edit again on the fine-tuned weights from its target values z.

An edit is (keys, target outputs z at the last edited layer L): MEMIT/AlphaEdit spread z − h(L) over the edited
layers. Fine-tuning moves both the keys and h(L); re-solving with the *same* z on the fine-tuned weights
(:func:`editdecay.edit.spread.apply_update` with the method's update rule from :mod:`editdecay.edit.registry`:
the editor's own spreading and solve) restores the edited state
wherever z is still a valid target, i.e. the layers above L still turn z into the new object. For edits that
still fail afterwards although they held when fine-tuning started, z is re-optimised on the current model
(``compute_targets``) and those edits are solved once more — the expensive path, taken only where needed.

Where z comes from (``z_source``):
- ``base``: z exactly as the edit optimised it, i.e. ``compute_targets`` on the base model with the manifest's
  records, templates and settings; the per-request target cache (``$EDITDECAY_HOME/targets``, filled when the
  edit was made) makes it a lookup, otherwise it is optimised again (and cached);
- ``edited``: the output the edited model actually reaches at L for each edit (one forward pass, no base model):
  the state that made the edit hold, which MEMIT's regularised solve leaves somewhat short of z.
The update rule's second moments C are the base model's (the edit's own, from the statistics cache): C weighs
how much the re-solve may disturb generic keys, which fine-tuning changes little.

Every phase is timed; the sum is the strategy's extra compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editdecay.errors import ConfigError
from editdecay.models.arch import get_adapter
from editdecay.preserve.spec import EditSpec
from editdecay.stats import SUCCESS_THRESHOLD


@dataclass
class ReeditPlan:
    """What is gathered before fine-tuning: z, C, and which edits held on the starting model."""

    z: torch.Tensor  # [n, d] target output of layer L at the bare prompts' subject token
    z_source: str
    cov: dict[int, torch.Tensor]  # the base model's second moments C per edited layer (the edit's own)
    efficacy_before: list[float]
    seconds: dict[str, float] = field(default_factory=dict)
    stats_id: str = ""  # names C (as StatsResult.stats_id); with ``cov``, what a method's build_rule reads


def _hparams(spec: EditSpec) -> Any:
    from editdecay.edit.hparams import hparams_from_dict

    return hparams_from_dict(spec.method, spec.need("hparams", spec.hparams))


def _efficacy(model: nn.Module, tok: Any, spec: EditSpec) -> list[float]:
    from editdecay.evaluate.api import evaluate_edits

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            rows = evaluate_edits(model, tok, spec.records)["records"]
    finally:
        model.train(was_training)
    return [float(r["efficacy"]) for r in rows]


def prepare(model: nn.Module, tok: Any, spec: EditSpec, z_source: str = "base", *, stats_cache: Any = None,
            targets_cache: Any = None, progress: bool = False) -> ReeditPlan:
    """Gather z (from ``z_source``), the base model's C and the starting efficacy; ``model`` is not changed."""
    from editdecay.data.tokens import pad_token_id as _pad_id
    from editdecay.edit.hooks import frozen
    from editdecay.edit.keys import subject_pass
    from editdecay.edit.prompts import Encoder, SubjectPrompts
    from editdecay.edit.stats import StatsCache, second_moments
    from editdecay.edit.targets import compute_targets
    from editdecay.edit.targets_cache import as_cache
    from editdecay.models.registry import load_model

    if z_source not in ("base", "edited"):
        raise ConfigError(f"fine-tuning setting 'reedit_z' = {z_source!r}: use base or edited")
    seconds: dict[str, float] = {}
    hp = _hparams(spec)
    templates = spec.need("context_templates", spec.templates)
    requests = spec.requests()
    t = time.perf_counter()
    base, base_tok = load_model(spec.need("base_model_path", spec.base_model))
    adapter = get_adapter(base)
    seconds["load_base"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = second_moments(base, base_tok, adapter, hp.layers, corpora=hp.mom2_dataset, n_tokens=hp.mom2_n_tokens,
                           seq_len=hp.mom2_seq_len, accum_dtype=hp.mom2_dtype,
                           cache=stats_cache if stats_cache is not None else StatsCache.default(), progress=progress)
    seconds["stats"] = time.perf_counter() - t
    t = time.perf_counter()
    if z_source == "base":
        z = compute_targets(base, base_tok, adapter, requests, templates, hp, progress=progress,
                            cache=as_cache(targets_cache)).z
    else:
        prompts = SubjectPrompts.build(Encoder(tok), requests, templates)
        with frozen(model), torch.no_grad():
            z = subject_pass(model, get_adapter(model), prompts, key_layers=[hp.layers[-1]], z_layer=hp.layers[-1],
                             pad_id=_pad_id(tok)).z_out
    seconds["targets"] = time.perf_counter() - t
    del base
    t = time.perf_counter()
    before = _efficacy(model, tok, spec)
    seconds["evaluate_before"] = time.perf_counter() - t
    return ReeditPlan(z.float().cpu(), z_source, {k: v.cpu() for k, v in stats.cov.items()}, before, seconds,
                      stats_id=stats.stats_id)


def _rule(spec: EditSpec, hp: Any, plan: ReeditPlan) -> Any:
    """The edit's method's update rule over the base model's C, built by the method registry (a fresh state for a
    stateful method: re-editing solves the edit once, not as the next batch of a sequence)."""
    from editdecay.edit.registry import get_method

    try:
        method = get_method(spec.method)
    except ConfigError as exc:
        raise ConfigError(f"{spec.source}: re-editing needs a registered editing method: {exc}") from None
    rule, _state = method.build_rule(hp, plan)  # the plan holds what build_rule reads of the statistics: cov, stats_id
    return rule


def apply(model: nn.Module, tok: Any, spec: EditSpec, plan: ReeditPlan, *, reoptimise: bool = True,
          progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Re-solve the edit on ``model`` in place; return (deltas written, report with counts and seconds)."""
    from editdecay.edit.spread import apply_update
    from editdecay.edit.targets import Targets, compute_targets

    hp = _hparams(spec)
    adapter = get_adapter(model)
    templates = spec.need("context_templates", spec.templates)
    requests = spec.requests()
    rule = _rule(spec, hp, plan)
    seconds = dict(plan.seconds)  # the strategy's cost
    diagnostic: dict[str, float] = {}  # evaluations only the report needs
    was_training = model.training
    model.eval()
    try:
        t = time.perf_counter()
        after_ft = _efficacy(model, tok, spec)
        diagnostic["evaluate_after_ft"] = time.perf_counter() - t
        t = time.perf_counter()
        z = plan.z
        targets = Targets(z=z, h_init=z, layer=hp.layers[-1], loss=[], prob=[], steps=[])
        deltas = apply_update(model, tok, adapter, requests, templates, hp, targets, rule)
        seconds["solve"] = time.perf_counter() - t
        t = time.perf_counter()
        after_solve = _efficacy(model, tok, spec)
        seconds["evaluate_after_solve"] = time.perf_counter() - t
        need = [i for i, (b, a) in enumerate(zip(plan.efficacy_before, after_solve, strict=True))
                if b > SUCCESS_THRESHOLD and a <= SUCCESS_THRESHOLD]
        final = after_solve
        if reoptimise and need:
            t = time.perf_counter()
            subset = [requests[i] for i in need]
            fresh = compute_targets(model, tok, adapter, subset, templates, hp, progress=progress, cache=None)
            more = apply_update(model, tok, adapter, subset, templates, hp, fresh, rule)
            for name, d in more.items():
                deltas[name] = deltas[name] + d if name in deltas else d
            seconds["reoptimise"] = time.perf_counter() - t
            t = time.perf_counter()
            final = _efficacy(model, tok, spec)
            diagnostic["evaluate_final"] = time.perf_counter() - t
    finally:
        model.train(was_training)

    def held(values: list[float]) -> int:
        return sum(v > SUCCESS_THRESHOLD for v in values)

    report = {"z_source": plan.z_source, "n_records": len(requests), "held_before_ft": held(plan.efficacy_before),
              "held_after_ft": held(after_ft), "held_after_solve": held(after_solve),
              "reoptimised": len(need) if reoptimise else 0, "needed_reoptimise": len(need), "held_final": held(final),
              "seconds": {k: round(v, 3) for k, v in seconds.items()}, "total_seconds": round(sum(seconds.values()), 3),
              "diagnostic_seconds": {k: round(v, 3) for k, v in diagnostic.items()}}
    return deltas, report
