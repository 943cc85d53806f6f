"""Target values z: for every request, the output of the last edited layer L that makes the model say the target.

:func:`compute_targets` optimises a residual offset δ at the output of layer L, at the subject's last token of
every prompt, with Adam on the mean target NLL over the context-prefixed prompts + ``kl_factor``·KL on
"{subject} is a" + ``v_weight_decay``·‖δ‖/‖h‖² (the reference code's form), δ clamped to
``clamp_norm_factor``·‖h‖; a request stops when its loss is below ``v_early_stop_loss``. All requests of a chunk
share one forward and backward per step, but each δ gets exactly the gradient of its own loss, so the result
equals the one-request-at-a-time optimisation (:func:`compute_target_reference`, the reference code's way, kept
for the benchmark and the equality test). Speed: layers 0..L run once and are replayed
(:mod:`editdecay.edit.replay`); finished z are kept per request in :mod:`editdecay.edit.targets_cache`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.data.tokens import pad_token_id
from editdecay.edit.hooks import frozen, model_device, out_tensor, pad_right
from editdecay.edit.prompts import Encoder, Request, ZBatch, request_names, z_batch
from editdecay.edit.replay import CachedRunner, FullRunner
from editdecay.edit.targets_cache import TargetCache, TargetRow, model_key, request_key
from editdecay.errors import NumericalError
from editdecay.models.arch import ArchAdapter
from editdecay.models.device import attention_for_backward


@dataclass
class Targets:
    """Result of the z optimisation for a list of requests (rows in request order)."""

    z: torch.Tensor  # [n, d] target output of layer `layer` at the bare prompt's subject token
    h_init: torch.Tensor  # [n, d] that output before editing
    layer: int
    loss: list[float]  # final loss per request
    prob: list[float]  # final mean target probability exp(-NLL) over the context prompts
    steps: list[int]  # gradient steps taken per request


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
    # a bf16/fp16 model on the CPU optimises with eager attention (its sdpa backward is slow there; float32 and
    # GPUs keep theirs): see editdecay.models.device.backward_attention
    with frozen(model), attention_for_backward(model):
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


def _optimise_chunk(model, tok, adapter, enc, requests, templates, hp, layer, on_step=None):
    device = model_device(model)
    b = z_batch(enc, requests, templates)
    n_req, n_seq = len(requests), len(b.ids)
    runner_cls = CachedRunner if getattr(hp, "z_prefix_cache", True) else FullRunner
    runner = runner_cls(model, adapter, b, layer, pad_token_id(tok))
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
                                 f"requests {request_names(requests, bad)}; try a smaller v_lr or clamp_norm_factor")
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
        raise NumericalError(f"target-value optimisation at layer {layer}: non-finite δ for requests {request_names(requests, bad)}")
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
    device = model_device(model)
    b = z_batch(Encoder(tok), [request], templates)
    ids = pad_right(b.ids, pad_token_id(tok), device)
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
            h = out_tensor(output)
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


def _mean_prompt_prob(logp: torch.Tensor, rows: torch.Tensor, b: ZBatch, act_req: torch.Tensor,
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


__all__ = ["Targets", "compute_targets", "compute_target_reference"]
