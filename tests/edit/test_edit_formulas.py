"""The update formulas on small random matrices: MEMIT, AlphaEdit (one batch and sequential), the checked solve."""

from __future__ import annotations

import pytest
import torch

from editdecay.edit.alphaedit import AlphaEditRule, AlphaEditState, NullSpaceProjection, alphaedit_factors
from editdecay.edit.linalg import solve_checked
from editdecay.edit.memit import MemitRule, memit_factors
from editdecay.errors import NumericalError


def memit_delta(*args, **kwargs) -> torch.Tensor:
    """ΔW = L R from the factors MEMIT solves for."""
    left, right = memit_factors(*args, **kwargs)
    return left @ right


def alphaedit_delta(*args, **kwargs) -> torch.Tensor:
    left, right = alphaedit_factors(*args, **kwargs)
    return left @ right


def _solve(rule, layer, keys, resid) -> torch.Tensor:
    left, right = rule.factors(layer, keys, resid)
    return left @ right


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cov(d: int, seed: int = 0) -> torch.Tensor:
    x = _rand(4 * d, d, seed=seed)
    return x.T @ x / (4 * d)


def _cov_with_null_space(d: int, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C = U diag(s) Uᵀ with ``rank`` eigenvalues >= 1 and the rest 1e-6 (below any sane threshold)."""
    q, _ = torch.linalg.qr(_rand(d, d, seed=seed))
    s = torch.cat([1.0 + torch.rand(rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
                   torch.full((d - rank,), 1e-6, dtype=torch.float64)])
    return q @ torch.diag(s) @ q.T, q


def test_memit_maps_keys_exactly_as_lambda_vanishes():
    d_in, d_out, n = 24, 10, 6
    keys, resid, cov = _rand(d_in, n, seed=1), _rand(d_out, n, seed=2), _cov(d_in, seed=3)
    delta = memit_delta(keys, resid, cov, lam=1e-9)
    torch.testing.assert_close(delta @ keys, resid, rtol=1e-6, atol=1e-6)


def test_memit_matches_closed_form_and_shrinks_with_lambda():
    d_in, d_out, n = 16, 8, 5
    keys, resid, cov = _rand(d_in, n, seed=4), _rand(d_out, n, seed=5), _cov(d_in, seed=6)
    lam = 3.0
    expected = resid @ keys.T @ torch.linalg.inv(lam * cov + keys @ keys.T)
    torch.testing.assert_close(memit_delta(keys, resid, cov, lam), expected, rtol=1e-9, atol=1e-10)
    small = memit_delta(keys, resid, cov, 1e4).norm()
    large = memit_delta(keys, resid, cov, 1e-3).norm()
    assert small < 0.01 * large
    # float32 inputs are solved in float64
    assert memit_delta(keys.float(), resid.float(), cov.float(), lam).dtype == torch.float64


def test_alphaedit_preserves_keys_in_cov_span_and_hits_targets():
    d_in, d_out, rank, n = 32, 12, 20, 5
    cov, q = _cov_with_null_space(d_in, rank, seed=7)
    proj = NullSpaceProjection.from_cov(cov, threshold=1e-2)
    assert proj.rank == d_in - rank
    preserved = q[:, :rank] @ _rand(rank, 9, seed=8)  # keys the model must keep answering the same
    keys, resid = _rand(d_in, n, seed=9), _rand(d_out, n, seed=10)
    delta = alphaedit_delta(keys, resid, proj, None, alpha=1e-8)
    assert (delta @ preserved).norm() < 1e-5 * resid.norm()  # exactly 0 in exact arithmetic
    torch.testing.assert_close(delta @ keys, resid, rtol=1e-5, atol=1e-5)
    # the formula as written: ΔW = R Kᵀ P (K Kᵀ P + α I)⁻¹
    alpha = 0.5
    p = proj.matrix()
    expected = resid @ keys.T @ p @ torch.linalg.inv(keys @ keys.T @ p + alpha * torch.eye(d_in, dtype=torch.float64))
    torch.testing.assert_close(alphaedit_delta(keys, resid, proj, None, alpha), expected, rtol=1e-8, atol=1e-10)


def test_sequential_alphaedit_keeps_earlier_edits():
    d_in, d_out, rank = 40, 10, 20
    cov, _ = _cov_with_null_space(d_in, rank, seed=11)
    state = AlphaEditState.from_stats({3: cov}, threshold=1e-2)
    rule = AlphaEditRule(state, L2=1e-7)
    k1, r1 = _rand(d_in, 4, seed=12), _rand(d_out, 4, seed=13)
    k2, r2 = _rand(d_in, 4, seed=14), _rand(d_out, 4, seed=15)
    d1 = _solve(rule, 3, k1, r1)
    rule.after_edit({3: k1})
    assert state.n_edits == 4 and 3 in state.prev_cov
    d2 = _solve(rule, 3, k2, r2)
    rule.after_edit({3: k2})
    total = d1 + d2
    torch.testing.assert_close(total @ k1, r1, rtol=1e-4, atol=1e-4)  # the first batch still holds
    torch.testing.assert_close(d2 @ k2, r2, rtol=1e-4, atol=1e-4)
    # without the memory of k1 the second edit disturbs the first batch's outputs
    fresh = AlphaEditRule(AlphaEditState.from_stats({3: cov}, threshold=1e-2), L2=1e-7)
    fresh = _solve(fresh, 3, k2, r2)
    assert (fresh @ k1).norm() > 100 * (d2 @ k1).norm()


def test_projection_compact_and_full_storage_agree(tmp_path):
    d = 16
    cov_small_null, _ = _cov_with_null_space(d, 12, seed=16)  # null space rank 4 -> basis
    cov_big_null, _ = _cov_with_null_space(d, 3, seed=17)  # null space rank 13 -> full matrix
    small = NullSpaceProjection.from_cov(cov_small_null, 1e-2)
    big = NullSpaceProjection.from_cov(cov_big_null, 1e-2)
    assert small.basis is not None and small.full is None and small.rank == 4
    assert big.full is not None and big.rank == 13
    x = _rand(d, 3, seed=18)
    for proj in (small, big):
        p = proj.matrix()
        torch.testing.assert_close(p @ p, p, rtol=1e-9, atol=1e-9)  # a projection
        torch.testing.assert_close(proj.apply(x), p @ x)
    state = AlphaEditState(1e-2, {1: small, 2: big}, {1: _cov(d)}, n_edits=7, stats_id="abc")
    state.save(tmp_path / "state.safetensors")
    back = AlphaEditState.load(tmp_path / "state.safetensors")
    assert back.n_edits == 7 and back.stats_id == "abc" and back.ranks() == {1: 4, 2: 13}
    torch.testing.assert_close(back.projections[2].matrix(), big.matrix())
    torch.testing.assert_close(back.prev_cov[1], state.prev_cov[1])


def test_solve_checked_refuses_bad_systems():
    a = _cov(8)
    b = _rand(8, 2)
    torch.testing.assert_close(a @ solve_checked(a, b, what="ok"), b)
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="layer 5"):
        solve_checked(bad, b, what="layer 5")
    singular = torch.zeros(8, 8, dtype=torch.float64)
    with pytest.raises(NumericalError, match="singular|ill-conditioned"):
        solve_checked(singular, b, what="layer 5")
    nearly = torch.diag(torch.tensor([1.0] * 7 + [1e-15], dtype=torch.float64))
    with pytest.raises(NumericalError, match="condition number"):
        solve_checked(nearly, b, what="layer 5", max_condition=1e12, symmetric=True)


def test_memit_rule_names_the_layer():
    rule = MemitRule({4: torch.full((6, 6), float("nan"), dtype=torch.float64)}, mom2_update_weight=10.0)
    with pytest.raises(NumericalError, match="layer 4"):
        _solve(rule, 4, _rand(6, 2), _rand(3, 2))


def test_alphaedit_state_keeps_k_p_k_p_t_exactly_in_half_the_space(tmp_path):
    """K_pK_pᵀ is stored as its upper triangle when it is symmetric bit for bit (after_edit makes it so: a matrix
    product need not be), else in full; both load back exactly."""
    from safetensors import safe_open

    d = 64
    k = _rand(d, 40, seed=21)
    rule = AlphaEditRule(AlphaEditState(1e-2, {}, {}, n_edits=0, stats_id="s"), L2=1.0)
    rule.after_edit({3: k})
    kkt = rule.state.prev_cov[3]
    assert torch.equal(kkt, kkt.T) and torch.equal(torch.triu(kkt), torch.triu(k @ k.T))
    lopsided = kkt.clone()
    lopsided[0, 1] += 1e-9  # not symmetric: kept whole
    proj = NullSpaceProjection.from_cov(_cov(d), 1e-2)
    for prev, stored in ((kkt, "prev_cov_upper.3"), (lopsided, "prev_cov.3")):
        state = AlphaEditState(1e-2, {3: proj}, {3: prev}, n_edits=40, stats_id="s")
        state.save(tmp_path / "state.safetensors")
        with safe_open(str(tmp_path / "state.safetensors"), framework="pt") as fh:
            assert stored in set(fh.keys())
            numel = fh.get_tensor(stored).numel()
        assert numel == (d * (d + 1) // 2 if stored.startswith("prev_cov_upper") else d * d)
        assert torch.equal(AlphaEditState.load(tmp_path / "state.safetensors").prev_cov[3], prev)
