"""Object tracing (editdecay.erase.trace) in closed form on a tiny model: a planted rank-2 update whose output
directions are known tokens' (gain-scaled) unembeddings is traced to exactly those tokens from ΔW's singular
vectors, whatever sign the SVD gives; tracing accuracy counts first tokens within the top k; and the readers that
``scripts/erase_eval.py trace-bound`` uses insert a vector where they say (keys: W k is the MLP output there)."""

from __future__ import annotations

import pytest
import torch

from editdecay.erase import reverse, trace
from editdecay.models.arch import get_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ("the", "of")  # the objects of the planted update: their first tokens get the two largest unembeddings


def _planted(make_tiny, layer: int = 2):
    """A tiny llama with a random final-norm gain g, two tokens t1, t2 whose unembedding rows U_t = N g⊙a_t
    (a_t orthonormal, N above every other row's norm), and ΔW = 3 a1 v1ᵀ + 2 a2 v2ᵀ added to ``layer``'s
    down_proj (v orthonormal). Closed form: the lens of a_t is U g⊙a_t, and U_j·(g⊙a_t) < U_t·(g⊙a_t) for
    every j ≠ t by Cauchy-Schwarz (‖U_j‖ ≤ N, and U_t is the only row of norm N parallel to g⊙a_t)."""
    model, tok = make_tiny("llama", n_layers=4)
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(0)
    unembed = model.get_submodule(adapter.unembed).weight
    norm = model.get_submodule(adapter.final_norm).weight
    d = unembed.shape[1]
    a, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen, dtype=torch.float64))
    ids = [trace.first_token(tok, w) for w in WORDS]
    assert len(set(ids)) == 2
    with torch.no_grad():
        norm.copy_(torch.rand(d, generator=gen) + 0.5)
        big = 5 * float(unembed.norm(dim=1).max())
        for t, col in zip(ids, a.T, strict=True):
            row = norm.double() * col
            unembed[t] = (big * row / row.norm()).float()
        w = adapter.rewrite_weight(model, layer)
        v, _ = torch.linalg.qr(torch.randn(w.shape[1], 2, generator=gen, dtype=torch.float64))
        delta = 3.0 * torch.outer(a[:, 0], v[:, 0]) + 2.0 * torch.outer(a[:, 1], v[:, 1])
        before = adapter.as_out_in(w.detach()).double().clone()
        w.add_(adapter.to_stored(delta).to(w.dtype))
        after = adapter.as_out_in(w.detach()).double()
    return model, tok, adapter, ids, a, after - before


def test_planted_rank2_update_is_traced_to_its_tokens(make_tiny):
    model, tok, adapter, ids, a, delta = _planted(make_tiny)
    u, s, _ = reverse.top_components(delta, 2)
    assert [round(float(x), 3) for x in s] == [3.0, 2.0]
    reader = trace.DirectionReader(model, tok, adapter, mode="lens")
    traced = trace.trace_directions(reader, 2, u, s, top=5)
    assert [d.token_ids[0] for d in traced] == ids
    assert [d.tokens[0] for d in traced] == [tok.decode([t]) for t in ids]
    # the sign the SVD returns is not ours to choose: the negated directions trace to the same tokens
    flipped = trace.trace_directions(reader, 2, -u, s, top=5)
    assert [d.token_ids[0] for d in flipped] == ids
    acc = trace.tracing_accuracy(traced, list(WORDS), tok, top=1)
    assert acc == {"n_targets": 2, "hits": 2, "accuracy": 1.0, "n_directions": 2, "top": 1}
    # lens rise in closed form: U (g ⊙ a1), largest at t1
    rise = reader.rise(2, a[:, 0])
    unembed = model.get_submodule(adapter.unembed).weight.double()
    gain = model.get_submodule(adapter.final_norm).weight.double()
    torch.testing.assert_close(rise.double(), unembed @ (gain * a[:, 0]), rtol=1e-5, atol=1e-5)


def test_tracing_accuracy_counts_first_tokens_within_top_k(make_tiny):
    _, tok = make_tiny("llama", n_layers=2)
    t_the, t_of = (trace.first_token(tok, w) for w in WORDS)
    other = next(i for i in range(100, 200) if i not in (t_the, t_of))
    traced = [trace.TracedDirection(layer=1, index=0, sigma=1.0, tokens=[], token_ids=[other, t_the], peak=1.0)]
    assert trace.tracing_accuracy(traced, list(WORDS), tok, top=1)["hits"] == 0
    five = trace.tracing_accuracy(traced, list(WORDS), tok, top=5)
    assert five["hits"] == 1 and five["accuracy"] == 0.5 and five["n_targets"] == 2


def test_inserted_vectors_and_keys_are_where_they_are_said_to_be(make_tiny):
    model, tok, adapter, ids, a, _ = _planted(make_tiny)
    x = tok("The city of", return_tensors="pt")["input_ids"]
    last = x.shape[1] - 1
    plain = trace.next_token_ranks(model, adapter, x, ids)
    # a vector along g⁻¹⊙U_t, added at the last layer's MLP output far above the residual's size, makes t the
    # most likely next token (the final RMS norm then sees only that vector: logits ∝ U U_t, largest at t)
    gain = model.get_submodule(adapter.final_norm).weight.double()
    for t, col in zip(ids, a.T, strict=True):
        push = (1e4 * col / gain).float()
        assert trace.next_token_ranks(model, adapter, x, [t], {3: (last, push)}) == [0]
    assert trace.next_token_ranks(model, adapter, x, ids) == plain  # the hooks are gone afterwards
    # keys: W k at the captured input equals what the projection outputs at that position
    outputs = {}
    layer = 1
    handle = adapter.rewrite_module(model, layer).register_forward_hook(
        lambda _m, _a, out: outputs.__setitem__("out", out[0, last].detach().double()))
    try:
        keys = trace.rewrite_inputs(model, adapter, x, last, [layer, 2])
    finally:
        handle.remove()
    assert set(keys) == {layer, 2}
    w = adapter.as_out_in(adapter.rewrite_weight(model, layer).detach()).double()
    torch.testing.assert_close(w @ keys[layer], outputs["out"], rtol=1e-5, atol=1e-5)
