"""The deltas file: each ΔW dense or as the exact rank-n factors the update rules solve for. Checked on closed
forms (small random matrices), as a file (what is factored, what is dense, malformed files refused by name) and
through real edits of tiny models, where the model rebuilt from a deltas-only folder must hold the same bits as
the model edited in memory, for one batch and for sequential batches, on [out, in] and transposed layouts."""

from __future__ import annotations

import pytest
import torch
from helpers.edits import FAST, RECORDS
from safetensors.torch import load_file, save_file

from editdecay.artifacts import read_deltas, write_deltas
from editdecay.deltas import decode, dense_from_factors, encode, lowrank_product
from editdecay.edit.alphaedit import NullSpaceProjection, alphaedit_factors
from editdecay.edit.api import edit, edit_to_folder
from editdecay.edit.memit import memit_factors
from editdecay.edit.targets_cache import TargetCache
from editdecay.errors import ModelError
from editdecay.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_memit_factors_multiply_to_the_closed_form():
    d_in, d_out, n, lam = 12, 7, 3, 5.0
    keys, resid = _rand(d_in, n, seed=1), _rand(d_out, n, seed=2)
    x = _rand(d_in, 40, seed=3)
    cov = x @ x.T / 40
    left, right = memit_factors(keys, resid, cov, lam)
    assert left.shape == (d_out, n) and right.shape == (n, d_in)
    expected = resid @ keys.T @ torch.linalg.inv(lam * cov + keys @ keys.T)  # eq. 14, explicit inverse
    torch.testing.assert_close(left @ right, expected, rtol=1e-9, atol=1e-11)


def test_alphaedit_factors_equal_the_reference_solve_for_all_outputs():
    """The reference solves (P(KKᵀ + K_pK_pᵀ) + αI) X = P K Rᵀ and takes ΔW = Xᵀ; solving for P K alone gives
    the same matrix as R Yᵀ."""
    d_in, d_out, n, alpha = 10, 6, 3, 0.5
    keys, resid, prev_keys = _rand(d_in, n, seed=4), _rand(d_out, n, seed=5), _rand(d_in, 2, seed=6)
    x = _rand(d_in, 30, seed=7)
    proj = NullSpaceProjection.from_cov(x @ x.T / 30, threshold=0.5)
    p = proj.matrix()
    prev = prev_keys @ prev_keys.T
    a = p @ (keys @ keys.T + prev) + alpha * torch.eye(d_in, dtype=torch.float64)
    reference = torch.linalg.solve(a, p @ keys @ resid.T).T
    left, right = alphaedit_factors(keys, resid, proj, prev, alpha)
    assert left.shape == (d_out, n) and right.shape == (n, d_in)
    torch.testing.assert_close(left @ right, reference, rtol=1e-9, atol=1e-11)


def test_a_weight_is_factored_only_where_its_factors_are_smaller(tmp_path):
    low = [(_rand(40, 2, seed=1), _rand(2, 60, seed=2))]  # 2 x 100 float64 = 1.6 kB < 40 x 60 float32 = 9.6 kB
    high = [(_rand(8, 6, seed=3), _rand(6, 9, seed=4))]  # 6 x 17 float64 = 816 B > 8 x 9 float32 = 288 B
    deltas = {"a.weight": dense_from_factors(low), "b.weight": dense_from_factors(high),
              "c.weight": torch.ones(3, 3)}
    tensors = encode(deltas, {"a.weight": low, "b.weight": high, "c.weight": None})
    assert sorted(tensors) == ["a.weight@0.left", "a.weight@0.right", "b.weight", "c.weight"]
    assert tensors["a.weight@0.left"].dtype == torch.float64 and tensors["b.weight"].dtype == torch.float32
    write_deltas(tmp_path / "d.safetensors", deltas, {"a.weight": low, "b.weight": high})
    back = read_deltas(tmp_path / "d.safetensors")
    assert set(back) == set(deltas)
    for name in deltas:
        assert back[name].dtype == torch.float32 and torch.equal(back[name], deltas[name]), name
    write_deltas(tmp_path / "dense.safetensors", deltas)  # no factors: every weight dense, as older files
    assert sorted(load_file(str(tmp_path / "dense.safetensors"))) == ["a.weight", "b.weight", "c.weight"]
    assert (tmp_path / "d.safetensors").stat().st_size < (tmp_path / "dense.safetensors").stat().st_size


def test_sequential_batches_are_summed_in_float32_in_their_order():
    pairs = [(_rand(30, 2, seed=s), _rand(2, 50, seed=s + 10)) for s in range(3)]
    expected = lowrank_product(*pairs[0])
    for pair in pairs[1:]:
        expected = expected + lowrank_product(*pair)
    got = decode(encode({"w": expected}, {"w": pairs}))["w"]
    assert torch.equal(got, expected)


@pytest.mark.parametrize(("tensors", "message"), [
    ({"w@0.left": torch.ones(3, 2)}, "'w' batch 0: factor 'left' or 'right' is missing"),
    ({"w@0.left": torch.ones(3, 2), "w@0.right": torch.ones(3, 4)}, "do not multiply"),
    ({"w@x.left": torch.ones(3, 2)}, "not a delta key"),
    ({"w": torch.ones(3, 4), "w@0.left": torch.ones(3, 1), "w@0.right": torch.ones(1, 4)}, "both dense and"),
])
def test_a_malformed_deltas_file_is_refused_naming_the_file_and_key(tmp_path, tensors, message):
    path = tmp_path / "deltas.safetensors"
    save_file({k: v.double() if "@" in k else v for k, v in tensors.items()}, str(path))
    with pytest.raises(ModelError, match=message) as err:
        read_deltas(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("arch", "method", "batch_size"), [
    ("llama", "memit", None), ("gpt2", "memit", None), ("llama", "memit", 1), ("gpt2", "alphaedit", 1),
])
def test_a_deltas_only_folder_rebuilds_the_edited_model_bit_for_bit(make_tiny, tmp_path, arch, method, batch_size):
    """The factors are what the file stores, and the edit wrote exactly their product into the model. With
    sequential batches the model in memory took W + s1 + s2 + ... one batch at a time and the file rebuilds
    W + (s1 + s2 + ...), so the weights agree to float32 rounding and the deltas bit for bit."""
    base_model, tok = make_tiny(arch, n_layers=4, d_model=64)
    base = tmp_path / "base"
    base_model.save_pretrained(base)
    tok.save_pretrained(base)
    model, tok = load_model(base)
    hp = dict(FAST, v_num_grad_steps=2)
    cache = TargetCache(tmp_path / "z")
    result = edit(model, tok, RECORDS, method=method, hparams=hp, stats_cache=False, progress=False,
                  batch_size=batch_size, targets_cache=cache)
    n_batches = len(RECORDS) if batch_size else 1
    assert all(len(parts) == n_batches for parts in result.factors.values())
    edit_to_folder(str(base), RECORDS, tmp_path / "edit", method=method, hparams=hp, stats_cache=False,
                   progress=False, batch_size=batch_size, targets_cache=cache, deltas_only=True)
    stored = load_file(str(tmp_path / "edit" / "deltas.safetensors"))
    assert stored and all("@" in key for key in stored)  # every rewritten weight factored
    assert len(stored) == 2 * n_batches * len(result.deltas)
    rebuilt = load_model(tmp_path / "edit")[0].state_dict()
    for name, weight in model.state_dict().items():
        if batch_size is None:
            assert torch.equal(rebuilt[name], weight), name
        else:
            torch.testing.assert_close(rebuilt[name], weight, rtol=0, atol=1e-6)
    for name, delta in read_deltas(tmp_path / "edit").items():
        assert torch.equal(delta, result.deltas[name]), name
