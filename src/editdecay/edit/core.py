"""The shared core of MEMIT and AlphaEdit: keys, target values z, and layer-by-layer spreading.

Nothing here is method-specific: a method is an :class:`UpdateRule` that turns (keys K, residuals R) of
one layer into ΔW. The pieces follow the MEMIT reference code (Meng et al. 2022), made batched and
faster without changing what is computed:

- **Context templates** (:func:`context_templates`): ``"{}"`` plus short texts the model generates itself
  from "The", "Therefore", "Because", "I", "You" (top-k 5 sampling, seeded), each followed by ``". {}"``.
- **Keys** (:func:`compute_keys`): the input of the rewritten MLP output projection at the subject's last
  token, averaged within each template group, then across groups (as the reference's ``compute_ks``).
- **Target values** (:func:`compute_targets`): for every request a residual offset δ at the output of the
  last edited layer L, at the subject's last token of every prompt, optimised with Adam on the mean
  target NLL over the context-prefixed prompts + ``kl_factor``·KL on "{subject} is a" +
  ``v_weight_decay``·‖δ‖/‖h‖² (the reference code's form), δ clamped to ``clamp_norm_factor``·‖h‖, a
  request stops when its loss is below ``v_early_stop_loss``. All requests of a chunk share one forward
  and backward per step, but each δ gets exactly the gradient of its own loss, so the result equals the
  one-request-at-a-time optimisation. Speed: layers 0..L run once (their output is cached and replayed,
  δ is added to it); each step runs only layers L+1.. and the unembedding at the positions the loss reads.
- **Spreading** (:func:`apply_update`): for each edited layer in order, keys and the remaining residual
  at layer L are recomputed on the partly edited model; the residual divided by the number of layers left
  is what this layer must add. Passes after the first restart from the cached input of the previously
  edited layer (layers below it are unchanged).

Targets are tokenised as continuations (``editdecay.evaluate.scoring.continuation``) exactly as the scorer
does: prompt ids (with the tokenizer's prefix specials) followed by the target's ids without specials.
Numerical trouble (non-finite loss, keys or residuals, a singular or ill-conditioned solve) raises
:class:`NumericalError` naming the layer and requests before anything is written into the weights.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from editdecay.data.records import EditRecord
from editdecay.errors import ConfigError, DataError, ModelError, NumericalError
from editdecay.evaluate.scoring import continuation, special_prefix
from editdecay.models.arch import ArchAdapter

CONTEXT_PROMPTS = ("The", "Therefore", "Because", "I", "You")
KL_PROMPT = "{} is a"


# ----------------------------------------------------------------------------------------------------------
# requests and tokenisation


@dataclass(frozen=True)
class Request:
    """One fact to write: what the core needs from an :class:`EditRecord`."""

    case_id: str
    subject: str
    prompt: str  # template with one "{}" for the subject
    target: str  # as stored in the record (no leading space)

    @classmethod
    def from_record(cls, record: EditRecord) -> Request:
        if "{}" not in record.prompt:
            raise DataError(str(record.case_id), "prompt has no '{}' for the subject", field="prompt")
        if not record.subject.strip():
            raise DataError(str(record.case_id), "subject is empty", field="subject")
        if not record.target_new.strip():
            raise DataError(str(record.case_id), "target_new is empty", field="target_new")
        return cls(str(record.case_id), record.subject, record.prompt, record.target_new)


def _names(requests: Sequence[Request], idx: Sequence[int] | None = None, limit: int = 5) -> str:
    chosen = [requests[i] for i in (idx if idx is not None else range(len(requests)))]
    text = ", ".join(f"{r.case_id} ({r.subject!r})" for r in chosen[:limit])
    return text + (f" and {len(chosen) - limit} more" if len(chosen) > limit else "")


class Encoder:
    """Tokenises prompts the way the scorer does and finds the subject's last token."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.prefix = special_prefix(tok)
        self.fast = bool(getattr(tok, "is_fast", False))

    def target_ids(self, target: str) -> list[int]:
        ids = list(self.tok(continuation(target), add_special_tokens=False)["input_ids"])
        if not ids:
            raise DataError("<target>", f"target {target!r} has no tokens")
        return ids

    def encode_with_subject(self, before: str, subject: str, after: str) -> tuple[list[int], int]:
        """Token ids of ``before + subject + after`` (with the prefix specials) and the subject's last index."""
        text = before + subject + after
        start, end = len(before), len(before) + len(subject)
        if self.fast:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
            last = -1
            for i, (s, e) in enumerate(offsets):
                if s < end and e > start:
                    last = i
            if last < 0:
                raise DataError("<prompt>", f"subject {subject!r} not found among the tokens of {text!r}")
        else:
            ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
            last = len(self.tok(text[:end], add_special_tokens=False)["input_ids"]) - 1
            if last < 0:
                raise DataError("<prompt>", f"subject {subject!r} has no tokens in {text!r}")
        return self.prefix + ids, len(self.prefix) + last


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise ConfigError(f"context template must contain exactly one '{{}}': {template!r}")
    before, after = template.split("{}")
    return before, after


def fill_parts(context: str, prompt: str) -> tuple[str, str]:
    """Text before and after the subject when ``prompt`` is put into the context template."""
    c_before, c_after = _split_template(context)
    p_before, p_after = prompt.split("{}", 1)
    return c_before + p_before, p_after + c_after


# ----------------------------------------------------------------------------------------------------------
# context templates


def context_templates(model: nn.Module, tok: Any, length_params: Sequence[Sequence[int]] = ((10, 5),),
                      seed: int = 0) -> list[list[str]]:
    """``[["{}"], [generated + ". {}", ...], ...]``: one group per ``(max_tokens, count)``.

    Each generated text is sampled (top-k 5) from the model, starting from "The", "Therefore", "Because",
    "I", "You" in turn, ``max_tokens`` tokens long including that word, as MEMIT's ``generate_fast``.
    Seeded and run with a private RNG state, so the global torch RNG is left as it was.
    """
    groups: list[list[str]] = [["{}"]]
    enc = Encoder(tok)
    device = _device(model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
        torch.manual_seed(seed)
        for length, count in length_params:
            group = []
            for j in range(int(count)):
                word = CONTEXT_PROMPTS[j % len(CONTEXT_PROMPTS)]
                ids = enc.prefix + list(tok(word, add_special_tokens=False)["input_ids"])
                n_new = max(1, int(length) - (len(ids) - len(enc.prefix)))
                input_ids = torch.tensor([ids], device=device)
                try:
                    out = model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, top_k=5,
                        top_p=1.0, temperature=1.0, num_beams=1, max_new_tokens=n_new, min_new_tokens=n_new,
                        pad_token_id=pad_id, use_cache=True,
                    )
                except RuntimeError as exc:
                    if "inf" in str(exc) or "nan" in str(exc):
                        raise NumericalError(f"generating the context templates: the model's probabilities hold "
                                             f"NaN/inf ({exc}); its weights may be corrupt") from None
                    raise
                text = tok.decode(out[0, len(enc.prefix):], skip_special_tokens=True)
                text = text.replace("{", " ").replace("}", " ")
                group.append(text + ". {}")
            if group:
                groups.append(group)
    return groups


# ----------------------------------------------------------------------------------------------------------
# running a slice of the layers


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest needed activation is captured."""


def _raise_stop(*_: Any) -> None:
    raise _StopForward


_LAYER_ATTRS = ("attention_type", "layer_idx", "is_sliding", "sliding_window", "layer_type", "use_sliding_window")


class _Skip(nn.Module):
    """Stands in for a decoder layer whose output is known: the identity, or a replayed tensor."""

    def __init__(self, original: nn.Module, replay: Callable[[], torch.Tensor] | None):
        super().__init__()
        for name in _LAYER_ATTRS:
            if hasattr(original, name) and not isinstance(getattr(original, name), (nn.Module, torch.Tensor)):
                setattr(self, name, getattr(original, name))
        self._replay = replay

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._replay is None:
            return hidden_states
        return self._replay()


@contextmanager
def start_at(model: nn.Module, adapter: ArchAdapter, start: int, replay: Callable[[], torch.Tensor] | None) -> Iterator[None]:
    """Run forwards as if layers ``0..start-1`` produced ``replay()`` (the input of layer ``start``).

    The embedding, masks and position embeddings are still made by the model's own forward (cheap), so
    this works for every architecture in the adapter table; the skipped layers do no work.
    """
    if start <= 0:
        yield
        return
    layers = adapter.layer_modules(model)
    saved = [layers[i] for i in range(start)]
    try:
        for i in range(start):
            layers[i] = _Skip(saved[i], replay if i == start - 1 else None)
        yield
    finally:
        for i in range(start):
            layers[i] = saved[i]


def _base(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ModelError(f"{type(model).__name__} has no base model (the decoder without the LM head)")
    return base


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise ModelError("cannot find the hidden states among a decoder layer's inputs")


def _out_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def run_model(model: nn.Module, input_ids: torch.Tensor, *, stop_module: nn.Module | None = None) -> torch.Tensor | None:
    """Forward the decoder (no LM head); stop early after ``stop_module`` if given. Returns the final
    (normed) hidden states, or None when stopped."""
    handle = stop_module.register_forward_hook(_raise_stop) if stop_module is not None else None
    try:
        out = _base(model)(input_ids=input_ids, use_cache=False)
        return out.last_hidden_state
    except _StopForward:
        return None
    finally:
        if handle is not None:
            handle.remove()


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Right-padded id matrix. Causal attention never lets a real token see a pad to its right, so no
    attention mask is needed and positions stay 0..n-1, as in an unpadded forward."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
    return ids.to(device)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration (restored afterwards)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if was_training:
            model.train()


# ----------------------------------------------------------------------------------------------------------
# prompts at the subject: keys, z at layer L, module outputs


@dataclass
class SubjectPrompts:
    """Every (request × context template) prompt, tokenised, with the subject's last token index.

    Rows are request-major: request r owns rows ``r*n_t .. r*n_t + n_t - 1``; row ``r*n_t`` is the bare
    prompt (template "{}"). ``group_of[t]`` is the template group of template t (for key averaging).
    """

    ids: list[list[int]]
    lookup: list[int]
    n_templates: int
    group_of: list[int]

    @classmethod
    def build(cls, enc: Encoder, requests: Sequence[Request], templates: Sequence[Sequence[str]]) -> SubjectPrompts:
        flat = [(g, t) for g, group in enumerate(templates) for t in group]
        if not flat or flat[0][1] != "{}":
            raise ConfigError("the first context template must be the bare '{}'")
        ids, lookup = [], []
        for req in requests:
            for _, template in flat:
                before, after = fill_parts(template, req.prompt)
                seq, idx = enc.encode_with_subject(before, req.subject, after)
                ids.append(seq)
                lookup.append(idx)
        return cls(ids, lookup, len(flat), [g for g, _ in flat])

    def bare_rows(self) -> list[int]:
        return list(range(0, len(self.ids), self.n_templates))

    def average_keys(self, per_row: torch.Tensor) -> torch.Tensor:
        """[n_rows, d] -> [n_requests, d]: mean within each template group, then across groups."""
        n_req = len(self.ids) // self.n_templates
        x = per_row.reshape(n_req, self.n_templates, -1)
        groups = sorted(set(self.group_of))
        means = []
        for g in groups:
            cols = [t for t, gg in enumerate(self.group_of) if gg == g]
            means.append(x[:, cols].mean(dim=1))
        return torch.stack(means, dim=0).mean(dim=0)


@dataclass
class _PassResult:
    keys: dict[int, torch.Tensor]  # layer -> [n_rows, d_in]
    z_out: torch.Tensor | None  # [n_bare, d] output of layer z_layer at the bare prompts
    module_out: torch.Tensor | None  # [n_bare, d] rewrite-module output at module_out_layer, bare prompts
    entry: list[torch.Tensor] | None  # per chunk: input hidden states of entry_layer [b, T, d]


def subject_pass(
    model: nn.Module,
    adapter: ArchAdapter,
    prompts: SubjectPrompts,
    *,
    key_layers: Sequence[int],
    z_layer: int | None = None,
    module_out_layer: int | None = None,
    start: int = 0,
    start_entry: list[torch.Tensor] | None = None,
    entry_layer: int | None = None,
    pad_id: int = 0,
    chunk: int = 64,
) -> _PassResult:
    """One forward over all prompts (in chunks) from layer ``start`` (replaying ``start_entry``, the cached
    input of layer ``start``) to the deepest layer needed, capturing keys at the subject's last token,
    layer ``z_layer``'s output and the rewrite module's output at bare prompts, and the input of
    ``entry_layer`` (kept whole, to restart a later pass there)."""
    device = _device(model)
    n = len(prompts.ids)
    deepest = max([*key_layers, z_layer if z_layer is not None else -1,
                   module_out_layer if module_out_layer is not None else -1])
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    z_parts: list[torch.Tensor] = []
    mod_parts: list[torch.Tensor] = []
    entries: list[torch.Tensor] = []
    n_t = prompts.n_templates
    chunk = max(n_t, (chunk // n_t) * n_t)  # whole requests per chunk
    cur: dict[str, torch.Tensor] = {}  # the chunk being run: row/column indices the hooks read

    def key_hook(layer: int):
        def hook(_m, args, kwargs):
            keys[layer].append(_hidden_arg(args, kwargs)[cur["rows"], cur["cols"]].detach().float())
        return hook

    def z_hook(_m, _args, output):
        z_parts.append(_out_tensor(output)[cur["bare"], cur["bare_cols"]].detach().float())

    def mod_hook(_m, _args, output):
        mod_parts.append(_out_tensor(output)[cur["bare"], cur["bare_cols"]].detach().float())

    def entry_hook(_m, args, kwargs):
        entries.append(_hidden_arg(args, kwargs).detach())

    handles = []
    try:
        for layer in key_layers:
            handles.append(adapter.rewrite_module(model, layer).register_forward_pre_hook(key_hook(layer),
                                                                                          with_kwargs=True))
        if z_layer is not None:
            handles.append(adapter.layer(model, z_layer).register_forward_hook(z_hook))
        if module_out_layer is not None:
            handles.append(adapter.rewrite_module(model, module_out_layer).register_forward_hook(mod_hook))
        if entry_layer is not None:
            handles.append(adapter.layer(model, entry_layer).register_forward_pre_hook(entry_hook, with_kwargs=True))
        for c, lo in enumerate(range(0, n, chunk)):
            hi = min(n, lo + chunk)
            ids = pad_right(prompts.ids[lo:hi], pad_id, device)
            cur["rows"] = torch.arange(hi - lo, device=device)
            cur["cols"] = torch.tensor(prompts.lookup[lo:hi], device=device)
            cur["bare"] = torch.tensor([i - lo for i in range(lo, hi) if i % n_t == 0], device=device)
            cur["bare_cols"] = cur["cols"][cur["bare"]]
            replay = None
            if start > 0:
                if start_entry is None:
                    raise ValueError("start > 0 needs the cached input of the start layer")
                cached = start_entry[c]
                replay = lambda cached=cached: cached  # noqa: E731
            with start_at(model, adapter, start, replay), torch.no_grad():
                run_model(model, ids, stop_module=adapter.layer(model, deepest))
    finally:
        for h in handles:
            h.remove()
    return _PassResult(
        keys={layer: torch.cat(v) for layer, v in keys.items()},
        z_out=torch.cat(z_parts) if z_parts else None,
        module_out=torch.cat(mod_parts) if mod_parts else None,
        entry=entries if entry_layer is not None else None,
    )


def compute_keys(model: nn.Module, tok: Any, adapter: ArchAdapter, layer: int, requests: Sequence[Request],
                 templates: Sequence[Sequence[str]]) -> torch.Tensor:
    """Keys [n_requests, d_in]: the rewrite module's input at the subject's last token, template-averaged."""
    prompts = SubjectPrompts.build(Encoder(tok), requests, templates)
    with frozen(model):
        res = subject_pass(model, adapter, prompts, key_layers=[layer], pad_id=_pad_id(tok))
    return prompts.average_keys(res.keys[layer])


def _pad_id(tok: Any) -> int:
    for value in (tok.pad_token_id, tok.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


# ----------------------------------------------------------------------------------------------------------
# target values z


@dataclass
class Targets:
    """Result of the z optimisation for a list of requests (rows in request order)."""

    z: torch.Tensor  # [n, d] target output of layer `layer` at the bare prompt's subject token
    h_init: torch.Tensor  # [n, d] that output before editing
    layer: int
    loss: list[float]  # final loss per request
    prob: list[float]  # final mean target probability exp(-NLL) over the context prompts
    steps: list[int]  # gradient steps taken per request

    @property
    def delta_norm(self) -> list[float]:
        return (self.z - self.h_init).norm(dim=-1).tolist()


@dataclass
class _ZBatch:
    ids: list[list[int]]
    lookup: list[int]
    owner: list[int]  # local request index of each sequence
    is_kl: list[bool]
    tgt_rows: list[int]  # sequence index of each target token
    tgt_cols: list[int]
    tgt_ids: list[int]
    tgt_w: list[float]  # 1 / (len(target) * n_rewriting_prompts): sums to a mean NLL per request


def _z_batch(enc: Encoder, requests: Sequence[Request], templates: Sequence[Sequence[str]]) -> _ZBatch:
    flat = [t for group in templates for t in group]
    b = _ZBatch([], [], [], [], [], [], [], [])
    for r, req in enumerate(requests):
        target = enc.target_ids(req.target)
        for template in flat:
            before, after = fill_parts(template, req.prompt)
            seq, idx = enc.encode_with_subject(before, req.subject, after)
            s = len(b.ids)
            b.ids.append(seq + target[:-1])
            b.lookup.append(idx)
            b.owner.append(r)
            b.is_kl.append(False)
            for j, t in enumerate(target):
                b.tgt_rows.append(s)
                b.tgt_cols.append(len(seq) - 1 + j)
                b.tgt_ids.append(t)
                b.tgt_w.append(1.0 / (len(target) * len(flat)))
        before, after = KL_PROMPT.split("{}")
        seq, idx = enc.encode_with_subject(before, req.subject, after)
        b.ids.append(seq)
        b.lookup.append(idx)
        b.owner.append(r)
        b.is_kl.append(True)
    return b


def _logits(model: nn.Module, adapter: ArchAdapter, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_submodule(adapter.unembed)(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def compute_targets(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    requests: Sequence[Request],
    templates: Sequence[Sequence[str]],
    hparams: Any,
    *,
    layer: int | None = None,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    cache: Any = None,
) -> Targets:
    """Optimise one δ per request at the output of ``layer`` (default: the last edited layer), batched.

    ``cache`` (a :class:`~editdecay.edit.targets_cache.TargetCache`; ``checkpoint_dir`` is a cache in that
    folder): each request's finished z is saved there (atomically) as soon as its chunk is done, and requests
    found there are not optimised again — so an interrupted long edit resumes where it stopped, MEMIT and
    AlphaEdit share one optimisation, and a larger edit set reuses the z of the requests it shares with a
    smaller one. A key hashes everything z depends on (the model's weights and config, the templates, the
    target-value settings, the layer and the request), so a changed input never reuses a stale value.
    """
    from editdecay.edit.targets_cache import TargetCache, TargetRow, model_key, request_key

    layer = hparams.layers[-1] if layer is None else layer
    if cache is None and checkpoint_dir is not None:
        cache = TargetCache(Path(checkpoint_dir))
    enc = Encoder(tok)
    n = len(requests)
    rows: list[TargetRow | None] = [None] * n
    keys: list[str] = []
    if cache is not None:
        base_key = model_key(model, templates, hparams, layer)
        keys = [request_key(base_key, r) for r in requests]
        rows = [cache.load(k, layer) for k in keys]
    todo = [i for i in range(n) if rows[i] is None]
    size = max(1, int(hparams.z_batch_size))
    n_chunks = -(-len(todo) // size)
    bar = _bar(progress, n_chunks * max(1, hparams.v_num_grad_steps), "target values", unit="step")
    probs_done: list[float] = [row.prob for row in rows if row is not None]
    with frozen(model):
        for c, lo in enumerate(range(0, len(todo), size)):
            idx = todo[lo:lo + size]
            chunk = [requests[i] for i in idx]
            on_step = None
            if bar is not None:
                def on_step(it: int, prob: torch.Tensor, c: int = c, lo: int = lo,
                            probs_done: list[float] = probs_done) -> None:
                    bar.n = c * max(1, hparams.v_num_grad_steps) + it + 1
                    med = float(torch.cat([torch.tensor(probs_done), prob.cpu()]).median()) if n else 0.0
                    bar.set_postfix_str(f"requests {lo}/{len(todo)}, median target prob {med:.3f}", refresh=False)
                    bar.refresh()
            res = _optimise_chunk(model, tok, adapter, enc, chunk, templates, hparams, layer, on_step=on_step)
            for j, i in enumerate(idx):
                rows[i] = TargetRow(res[0][j], res[1][j], res[2][j], res[3][j], res[4][j])
                if cache is not None:
                    cache.save(keys[i], rows[i])
            probs_done += res[3]
    if bar is not None:
        bar.n = bar.total
        bar.close()
    if cache is not None and len(todo) < n and progress:
        print(f"[editdecay edit] target values of {n - len(todo)} of {n} requests reused from {cache.root}",
              file=sys.stderr)
    done = [r for r in rows if r is not None]
    return Targets(torch.stack([r.z for r in done]), torch.stack([r.h_init for r in done]), layer,
                   [r.loss for r in done], [r.prob for r in done], [r.steps for r in done])


def _bar(progress: bool, total: int, desc: str, unit: str = "req"):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=False)


class _FullRunner:
    """Per step: layers L+1.. over whole sequences, layers 0..L replayed from one cached pass."""

    def __init__(self, model, adapter, b: _ZBatch, layer: int, pad_id: int):
        self.model, self.adapter, self.layer = model, adapter, layer
        device = _device(model)
        self.ids = pad_right(b.ids, pad_id, device)
        self.lens = torch.tensor([len(s) for s in b.ids], device=device)
        captured: list[torch.Tensor] = []
        handle = adapter.layer(model, layer).register_forward_hook(
            lambda _m, _a, out: captured.append(_out_tensor(out).detach()))
        try:
            with torch.no_grad():
                run_model(model, self.ids, stop_module=adapter.layer(model, layer))
        finally:
            handle.remove()
        self.h = captured[0]  # [n_seq, T, d]
        self.offset = torch.zeros(len(b.ids), dtype=torch.long, device=device)  # column of position 0

    def forward(self, act_seq: torch.Tensor, lookup_cols: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        width = int(self.lens[act_seq].max())
        h = self.h[act_seq, :width]
        edited = h.index_put((torch.arange(act_seq.numel(), device=h.device), lookup_cols), add.to(h.dtype),
                              accumulate=True)
        with start_at(self.model, self.adapter, self.layer + 1, lambda: edited):
            return run_model(self.model, self.ids[act_seq, :width])


class _CachedRunner:
    """Per step: layers L+1.. over the positions from the subject's last token on only.

    Positions before the subject's last token never see δ, so their keys/values at every layer are
    computed once (left-padded prefix, as in batched generation) and handed to each step as a KV cache;
    positions from the subject's last token on are replayed at layer L (+δ) and run through layers L+1...
    """

    def __init__(self, model, adapter, b: _ZBatch, layer: int, pad_id: int):
        from transformers import DynamicCache

        self.model, self.adapter, self.layer = model, adapter, layer
        self._cache_cls = DynamicCache
        device = _device(model)
        n = len(b.ids)
        pre = b.lookup
        self.P = max(pre)
        suf = [len(s) - p for s, p in zip(b.ids, pre, strict=True)]
        S = max(suf)
        self.prefix_mask = torch.zeros((n, self.P), dtype=torch.long, device=device)
        prefix_ids = torch.full((n, self.P), pad_id, dtype=torch.long)
        suffix_ids = torch.full((n, S), pad_id, dtype=torch.long)
        self.suffix_mask = torch.zeros((n, S), dtype=torch.long, device=device)
        for i, (seq, p) in enumerate(zip(b.ids, pre, strict=True)):
            if p:
                prefix_ids[i, self.P - p:] = torch.tensor(seq[:p])
                self.prefix_mask[i, self.P - p:] = 1
            suffix_ids[i, :len(seq) - p] = torch.tensor(seq[p:])
            self.suffix_mask[i, :len(seq) - p] = 1
        self.suffix_ids = suffix_ids.to(device)
        self.suffix_pos = torch.tensor(pre, device=device)[:, None] + torch.arange(S, device=device)[None, :]
        self.suffix_lens = torch.tensor(suf, device=device)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        base = _base(model)
        with torch.no_grad():
            cache = None
            if self.P > 0:
                cache = DynamicCache(config=model.config)
                pos = (self.prefix_mask.cumsum(-1) - 1).clamp_min(0)
                base(input_ids=prefix_ids.to(device), attention_mask=self.prefix_mask, position_ids=pos,
                     cache=cache, use_cache=True)
                self.kv = [(lay.keys, lay.values) for lay in cache.layers]
            captured: list[torch.Tensor] = []
            handle = adapter.layer(model, layer).register_forward_hook(
                lambda _m, _a, out: captured.append(_out_tensor(out).detach()))
            stop = adapter.layer(model, layer).register_forward_hook(_raise_stop)
            try:
                base(**self._inputs(torch.arange(n, device=device), S, cache))
            except _StopForward:
                pass
            finally:
                handle.remove()
                stop.remove()
        self.h = captured[0]  # [n_seq, S, d]: layer L output from the subject's last token on
        self.offset = torch.tensor(pre, device=device)  # absolute column of suffix position 0

    def _inputs(self, act_seq: torch.Tensor, width: int, cache) -> dict[str, Any]:
        mask = self.suffix_mask[act_seq, :width]
        if cache is not None:
            mask = torch.cat([self.prefix_mask[act_seq], mask], dim=1)
        return dict(input_ids=self.suffix_ids[act_seq, :width], attention_mask=mask,
                    position_ids=self.suffix_pos[act_seq, :width], cache=cache, use_cache=cache is not None)

    def _cache_for(self, act_seq: torch.Tensor):
        if self.kv is None:
            return None
        cache = self._cache_cls(config=self.model.config)
        for idx, (k, v) in enumerate(self.kv):
            cache.update(k[act_seq], v[act_seq], idx)
        return cache

    def forward(self, act_seq: torch.Tensor, lookup_cols: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        width = int(self.suffix_lens[act_seq].max())
        h = self.h[act_seq, :width]
        edited = h.index_put((torch.arange(act_seq.numel(), device=h.device), lookup_cols), add.to(h.dtype),
                              accumulate=True)
        with start_at(self.model, self.adapter, self.layer + 1, lambda: edited):
            out = _base(self.model)(**self._inputs(act_seq, width, self._cache_for(act_seq)))
        return out.last_hidden_state


def _optimise_chunk(model, tok, adapter, enc, requests, templates, hp, layer, on_step=None):
    device = _device(model)
    b = _z_batch(enc, requests, templates)
    n_req, n_seq = len(requests), len(b.ids)
    runner_cls = _CachedRunner if getattr(hp, "z_prefix_cache", True) else _FullRunner
    runner = runner_cls(model, adapter, b, layer, _pad_id(tok))
    lookup = torch.tensor(b.lookup, device=device)
    owner = torch.tensor(b.owner, device=device)
    is_kl = torch.tensor(b.is_kl, device=device)
    kl_seq = torch.nonzero(is_kl).flatten()  # one per request, in request order
    first_seq = torch.tensor([b.owner.index(r) for r in range(n_req)], device=device)  # bare template + target
    h_init = runner.h[first_seq, lookup[first_seq] - runner.offset[first_seq]].clone().float()  # [n_req, d]
    h_norm = h_init.norm(dim=-1)
    max_norm = hp.clamp_norm_factor * h_norm

    d = h_init.shape[-1]
    delta = torch.zeros(n_req, d, device=device)
    m = torch.zeros_like(delta)
    v = torch.zeros_like(delta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    active = torch.ones(n_req, dtype=torch.bool, device=device)
    final_loss = torch.full((n_req,), float("nan"), device=device)
    final_prob = torch.zeros(n_req, device=device)
    n_steps = torch.zeros(n_req, dtype=torch.long, device=device)
    kl_init = None

    tgt_rows = torch.tensor(b.tgt_rows, device=device)
    tgt_cols = torch.tensor(b.tgt_cols, device=device)
    tgt_ids = torch.tensor(b.tgt_ids, device=device)
    tgt_w = torch.tensor(b.tgt_w, device=device)
    tgt_owner = owner[tgt_rows]
    n_per_req = torch.bincount(owner[~is_kl], minlength=n_req).float()

    for it in range(max(1, hp.v_num_grad_steps)):
        act_req = torch.nonzero(active).flatten()
        if act_req.numel() == 0:
            break
        seq_mask = active[owner]
        act_seq = torch.nonzero(seq_mask).flatten()
        seq_local = torch.full((n_seq,), -1, dtype=torch.long, device=device)
        seq_local[act_seq] = torch.arange(act_seq.numel(), device=device)
        req_local = torch.full((n_req,), -1, dtype=torch.long, device=device)
        req_local[act_req] = torch.arange(act_req.numel(), device=device)
        d_act = delta[act_req].clone().requires_grad_(True)

        final = runner.forward(act_seq, lookup[act_seq] - runner.offset[act_seq], d_act[req_local[owner[act_seq]]])
        # rewriting NLL at the target positions only
        tmask = seq_mask[tgt_rows]
        rows_g = tgt_rows[tmask]
        logits = _logits(model, adapter, final[seq_local[rows_g], tgt_cols[tmask] - runner.offset[rows_g]])
        logp = torch.log_softmax(logits, dim=-1).gather(1, tgt_ids[tmask, None])[:, 0]
        nll = torch.zeros(act_req.numel(), device=device).index_add(
            0, req_local[tgt_owner[tmask]], -logp * tgt_w[tmask])
        # KL on "{subject} is a" at the subject's last token
        kl_rows = kl_seq[act_req]
        kl_logits = _logits(model, adapter, final[seq_local[kl_rows], lookup[kl_rows] - runner.offset[kl_rows]])
        kl_logp = torch.log_softmax(kl_logits, dim=-1)
        if kl_init is None:
            kl_init = kl_logp.detach().clone()  # all requests are active at the first step
        kl = (kl_logp.exp() * (kl_logp - kl_init[act_req])).sum(-1)
        wd = hp.v_weight_decay * d_act.norm(dim=-1) / h_norm[act_req] ** 2
        loss = nll + hp.kl_factor * kl + wd
        if not torch.isfinite(loss).all():
            bad = act_req[~torch.isfinite(loss)].tolist()
            raise NumericalError(f"target-value optimisation at layer {layer}: non-finite loss at step {it} for "
                                 f"requests {_names(requests, bad)}; try a smaller v_lr or clamp_norm_factor")
        with torch.no_grad():
            final_loss[act_req] = loss.detach()
            final_prob[act_req] = _mean_prompt_prob(logp.detach(), rows_g, b, act_req, n_per_req)
        if on_step is not None:
            on_step(it, final_prob)
        done = loss.detach() < hp.v_early_stop_loss
        if it >= hp.v_num_grad_steps - 1:
            break
        still = ~done
        if not still.any():
            break
        loss[still].sum().backward()
        with torch.no_grad():
            upd = act_req[still]
            g = d_act.grad[still]
            t = n_steps[upd] + 1
            m[upd] = beta1 * m[upd] + (1 - beta1) * g
            v[upd] = beta2 * v[upd] + (1 - beta2) * g * g
            m_hat = m[upd] / (1 - beta1 ** t.double()).float()[:, None]
            v_hat = v[upd] / (1 - beta2 ** t.double()).float()[:, None]
            new = delta[upd] - hp.v_lr * m_hat / (v_hat.sqrt() + eps)
            norms = new.norm(dim=-1)
            scale = torch.where(norms > max_norm[upd], max_norm[upd] / norms.clamp_min(1e-30), torch.ones_like(norms))
            delta[upd] = new * scale[:, None]
            n_steps[upd] = t
            active[act_req[done]] = False
    if not torch.isfinite(delta).all():
        bad = torch.nonzero(~torch.isfinite(delta).all(dim=-1)).flatten().tolist()
        raise NumericalError(f"target-value optimisation at layer {layer}: non-finite δ for requests {_names(requests, bad)}")
    z = (h_init + delta).float().cpu()
    return z, h_init.float().cpu(), final_loss.tolist(), final_prob.tolist(), n_steps.tolist()


def compute_target_reference(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    request: Request,
    templates: Sequence[Sequence[str]],
    hparams: Any,
    *,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """The reference code's way, for the benchmark and the equality test: ONE request, the whole model run
    at every step with a hook adding δ at layer L, logits at every position, ``torch.optim.Adam``.

    Returns (z [d], h_init [d], final loss, steps taken). Same prompts, loss and stopping rule as
    :func:`compute_targets`, so the results agree to float rounding.
    """
    layer = hparams.layers[-1] if layer is None else layer
    device = _device(model)
    b = _z_batch(Encoder(tok), [request], templates)
    ids = pad_right(b.ids, _pad_id(tok), device)
    rows = torch.arange(len(b.ids), device=device)
    lookup = torch.tensor(b.lookup, device=device)
    tgt_rows, tgt_cols = torch.tensor(b.tgt_rows, device=device), torch.tensor(b.tgt_cols, device=device)
    tgt_ids, tgt_w = torch.tensor(b.tgt_ids, device=device), torch.tensor(b.tgt_w, device=device)
    kl_row = len(b.ids) - 1
    holder: dict[str, torch.Tensor] = {}
    with frozen(model):
        delta = torch.zeros(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd,
                            device=device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hparams.v_lr)

        def hook(_m, _args, output):
            h = _out_tensor(output)
            if "init" not in holder:
                holder["init"] = h[0, lookup[0]].detach().clone().float()
            h = h.index_put((rows, lookup), delta.expand(len(b.ids), -1).to(h.dtype), accumulate=True)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = adapter.layer(model, layer).register_forward_hook(hook)
        kl_init = None
        steps = 0
        try:
            for it in range(max(1, hparams.v_num_grad_steps)):
                opt.zero_grad()
                logits = model(input_ids=ids, use_cache=False).logits.float()
                logp_all = torch.log_softmax(logits, dim=-1)
                logp = logp_all[tgt_rows, tgt_cols].gather(1, tgt_ids[:, None])[:, 0]
                nll = -(logp * tgt_w).sum()
                kl_logp = logp_all[kl_row, lookup[kl_row]]
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                kl = (kl_logp.exp() * (kl_logp - kl_init)).sum()
                h_init = holder["init"]
                loss = nll + hparams.kl_factor * kl + hparams.v_weight_decay * delta.norm() / h_init.norm() ** 2
                if loss.item() < hparams.v_early_stop_loss or it == hparams.v_num_grad_steps - 1:
                    break
                loss.backward()
                opt.step()
                steps += 1
                max_norm = hparams.clamp_norm_factor * h_init.norm()
                if delta.norm() > max_norm:
                    with torch.no_grad():
                        delta[...] = delta * max_norm / delta.norm()
        finally:
            handle.remove()
    h_init = holder["init"]
    return (h_init + delta).detach().float().cpu(), h_init.float().cpu(), float(loss.item()), steps


def _mean_prompt_prob(logp: torch.Tensor, rows: torch.Tensor, b: _ZBatch, act_req: torch.Tensor,
                      n_per_req: torch.Tensor) -> torch.Tensor:
    """Mean over each request's rewriting prompts of exp(mean target log-prob)."""
    device = logp.device
    n_seq = len(b.ids)
    seq_sum = torch.zeros(n_seq, device=device).index_add(0, rows, logp)
    seq_cnt = torch.zeros(n_seq, device=device).index_add(0, rows, torch.ones_like(logp))
    has = seq_cnt > 0
    seq_prob = torch.zeros(n_seq, device=device)
    seq_prob[has] = (seq_sum[has] / seq_cnt[has]).exp()
    owner = torch.tensor(b.owner, device=device)
    per_req = torch.zeros(len(n_per_req), device=device).index_add(0, owner, seq_prob) / n_per_req.clamp_min(1)
    return per_req[act_req]


# ----------------------------------------------------------------------------------------------------------
# solving and spreading


class UpdateRule(Protocol):
    """A method's update: ΔW [d_out, d_in] (float64) for one layer from keys [d_in, n] and residuals [d_out, n]."""

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor: ...

    def after_edit(self, keys: dict[int, torch.Tensor]) -> None: ...

    wants_final_keys: bool


def solve_checked(a: torch.Tensor, b: torch.Tensor, *, what: str, max_condition: float | None = None,
                  symmetric: bool = False) -> torch.Tensor:
    """``a⁻¹ b`` by an LU solve (never an explicit inverse), refusing singular, ill-conditioned or
    non-finite systems with :class:`NumericalError` (``what`` names the layer and requests)."""
    if not torch.isfinite(a).all() or not torch.isfinite(b).all():
        raise NumericalError(f"{what}: the system holds NaN/inf")
    if max_condition is not None and symmetric:
        eig = torch.linalg.eigvalsh(a)
        lo, hi = eig[0].item(), eig[-1].item()
        cond = math.inf if lo <= 0 else hi / lo
        if cond > max_condition:
            raise NumericalError(f"{what}: ill-conditioned solve (condition number {cond:.3g} > {max_condition:.3g}); "
                                 "increase mom2_update_weight or mom2_n_tokens, or edit fewer facts per batch")
    x, info = torch.linalg.solve_ex(a, b)
    if int(info) != 0 or not torch.isfinite(x).all():
        raise NumericalError(f"{what}: singular system (LU info {int(info)})")
    resid = torch.linalg.matrix_norm(a @ x - b) / torch.linalg.matrix_norm(b).clamp_min(1e-300)
    if resid.item() > 1e-6:
        raise NumericalError(f"{what}: ill-conditioned solve (relative residual {resid.item():.3g})")
    return x


def through_output_norm(norm: nn.Module, out: torch.Tensor, resid: torch.Tensor, iters: int = 20,
                        chunk: int = 64) -> torch.Tensor:
    """Δo with ``norm(out + Δo) - norm(out) ≈ resid`` (Gauss–Newton, minimum-norm steps).

    For architectures whose MLP output passes through a norm before the residual add (Gemma's
    post_feedforward_layernorm), the residual a layer must add is turned into a change of the rewritten
    projection's output. The norm is scale-invariant, so the damped normal equations pick the smallest Δo.
    """
    from torch.func import jacrev, vmap

    def f(x: torch.Tensor) -> torch.Tensor:
        return norm(x.float()).double()

    results = []
    with torch.no_grad():
        for lo in range(0, out.shape[0], chunk):
            o = out[lo:lo + chunk].double()
            r = resid[lo:lo + chunk].double()
            goal = f(o) + r
            step = torch.zeros_like(o)
            err = r.norm(dim=-1)
            eye = torch.eye(o.shape[-1], dtype=o.dtype, device=o.device)
            for _ in range(iters):
                if (err <= 1e-6 * r.norm(dim=-1)).all():
                    break
                x = o + step
                jac = vmap(jacrev(f))(x)  # [b, d, d]
                res = goal - f(x)
                jtj = jac.transpose(1, 2) @ jac
                damp = 1e-8 * jtj.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
                rhs = (jac.transpose(1, 2) @ res[..., None])[..., 0]
                direction = torch.linalg.solve(jtj + damp[:, None, None] * eye, rhs[..., None])[..., 0]
                # backtracking: a row takes the largest of 1, 1/2, 1/4 ... that lowers its error, else stays
                scale = torch.ones_like(err)
                accepted = torch.zeros_like(err, dtype=torch.bool)
                for _ in range(12):
                    trial = step + scale[:, None] * direction
                    trial_err = (goal - f(o + trial)).norm(dim=-1)
                    better = (trial_err < err) & ~accepted
                    step = torch.where(better[:, None], trial, step)
                    err = torch.where(better, trial_err, err)
                    accepted |= better
                    if accepted.all():
                        break
                    scale = torch.where(accepted, scale, scale / 2)
            results.append(step.float())
    return torch.cat(results)


def apply_update(
    model: nn.Module,
    tok: Any,
    adapter: ArchAdapter,
    requests: Sequence[Request],
    templates: Sequence[Sequence[str]],
    hparams: Any,
    targets: Targets,
    rule: UpdateRule,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Spread the targets over ``hparams.layers`` and write the updates into the model, in place.

    Keys, residuals and the solve stay on the model's device in float32/float64 whatever the weights'
    dtype. Returns the weight deltas {parameter name: ΔW in the stored orientation, float32, CPU}. Every layer's
    update is checked before it is written; on a :class:`NumericalError` the layers already written in
    this call are rolled back, so the model is never left half-edited with bad values.
    """
    layers = list(hparams.layers)
    z_layer = targets.layer
    if z_layer != layers[-1]:
        raise ConfigError(f"targets were computed at layer {z_layer}, but the last edited layer is {layers[-1]}")
    enc = Encoder(tok)
    prompts = SubjectPrompts.build(enc, requests, templates)
    pad = _pad_id(tok)
    norm_path = adapter.mlp_output_norm
    written: list[tuple[torch.Tensor, torch.Tensor]] = []
    deltas: dict[str, torch.Tensor] = {}
    entry_first: list[torch.Tensor] | None = None
    entry_prev: list[torch.Tensor] | None = None
    try:
        with frozen(model):
            for i, layer in enumerate(layers):
                start = layers[i - 1] if i > 0 else 0
                res = subject_pass(
                    model, adapter, prompts, key_layers=[layer], z_layer=z_layer,
                    module_out_layer=layer if norm_path else None, start=start,
                    start_entry=entry_prev if i > 0 else None, entry_layer=layer, pad_id=pad,
                )
                if i == 0:
                    entry_first = res.entry
                entry_prev = res.entry
                keys = prompts.average_keys(res.keys[layer])  # [n, d_in]
                cur_z = res.z_out  # [n, d]
                _check_finite(keys, f"keys at layer {layer}", requests)
                _check_finite(cur_z, f"hidden states at layer {z_layer}", requests)
                z = targets.z.to(device=cur_z.device, dtype=torch.float32)  # on the model's device
                resid = (z - cur_z) / (len(layers) - i)  # [n, d]
                if norm_path:
                    norm = adapter.layer(model, layer).get_submodule(norm_path)
                    resid = through_output_norm(norm, res.module_out, resid)
                _check_finite(resid, f"residuals at layer {layer}", requests)
                if log:
                    log(f"layer {layer}: mean residual norm {(z - cur_z).norm(dim=-1).mean():.3f}, "
                        f"writing {len(requests)} key/value pairs")
                what = f"layer {layer} ({len(requests)} requests: {_names(requests)})"
                try:
                    upd = rule.solve(layer, keys.T.double(), resid.T.double())  # [d_out, d_in]
                except NumericalError as exc:
                    if what in str(exc):
                        raise
                    raise NumericalError(f"{what}: {exc}") from None
                if not torch.isfinite(upd).all():
                    raise NumericalError(f"{what}: the update holds NaN/inf")
                weight = adapter.rewrite_weight(model, layer)
                # the delta is kept in float32 as solved; a half-precision weight gets W + ΔW summed in
                # float32 and rounded once (rounding ΔW first would lose its small entries)
                stored = adapter.to_stored(upd).to(torch.float32).contiguous()
                if stored.shape != weight.shape:
                    raise ModelError(f"{what}: update shape {tuple(stored.shape)} != weight {tuple(weight.shape)}")
                with torch.no_grad():
                    before = weight.detach().clone()
                    weight.copy_((weight.float() + stored.to(weight.device)).to(weight.dtype))
                    written.append((weight, before))
                name = adapter.rewrite_name(layer) + ".weight"
                deltas[name] = deltas.get(name, 0) + stored.cpu()
            if rule.wants_final_keys:
                res = subject_pass(model, adapter, prompts, key_layers=layers, start=layers[0],
                                   start_entry=entry_first, pad_id=pad)
                final = {layer: prompts.average_keys(res.keys[layer]) for layer in layers}
                for layer, k in final.items():
                    _check_finite(k, f"keys at layer {layer} after the edit", requests)
                rule.after_edit({layer: k.T.double() for layer, k in final.items()})
    except BaseException:
        with torch.no_grad():
            for weight, before in reversed(written):
                weight.copy_(before)
        raise
    return deltas


def _check_finite(x: torch.Tensor | None, what: str, requests: Sequence[Request]) -> None:
    if x is None:
        raise ModelError(f"{what}: nothing was captured (check the adapter's module paths)")
    ok = torch.isfinite(x).all(dim=-1)
    if not ok.all():
        bad = torch.nonzero(~ok).flatten().tolist()
        raise NumericalError(f"{what}: NaN/inf for requests {_names(requests, bad)}")


__all__ = [
    "Request", "Encoder", "SubjectPrompts", "Targets", "UpdateRule", "context_templates", "compute_keys",
    "compute_targets", "apply_update", "solve_checked", "through_output_norm", "start_at", "run_model",
    "frozen", "pad_right", "fill_parts",
]
