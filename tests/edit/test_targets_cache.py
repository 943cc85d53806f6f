"""The per-request target-value cache: z is shared by every update rule, every edit set that contains the
request and every re-run, and never reused when anything it depends on changed."""

from __future__ import annotations

import pytest
import torch
from helpers.edits import FAST, RECORDS, TEMPLATES, sharpen

import editdecay.edit.targets as targets_mod
from editdecay.edit.api import edit
from editdecay.edit.hparams import hparams_from_dict
from editdecay.edit.prompts import Request
from editdecay.edit.targets import compute_targets
from editdecay.edit.targets_cache import TargetCache
from editdecay.models.arch import get_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


def _counting(monkeypatch):
    real = targets_mod._optimise_chunk
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(len(args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(targets_mod, "_optimise_chunk", counted)
    return calls


def test_subset_in_another_order_reuses_every_request(make_tiny, tmp_path, monkeypatch):
    model, tok = make_tiny("llama", n_layers=4)
    sharpen(model)
    adapter = get_adapter(model)
    hp = hparams_from_dict("memit", FAST)
    requests = [Request.from_record(r) for r in RECORDS]
    cache = TargetCache(tmp_path / "z")
    calls = _counting(monkeypatch)
    whole = compute_targets(model, tok, adapter, requests, TEMPLATES, hp, cache=cache)
    assert calls == [3] and len(cache) == 3
    calls.clear()
    part = compute_targets(model, tok, adapter, [requests[2], requests[0]], TEMPLATES, hp, cache=cache)
    assert calls == []  # nothing optimised again
    torch.testing.assert_close(part.z, whole.z[[2, 0]])
    assert part.prob == [whole.prob[2], whole.prob[0]]
    # alone, a request gets the same z as inside a batch (each request has its own δ and loss terms)
    alone = compute_targets(model, tok, adapter, [requests[1]], TEMPLATES, hp)
    torch.testing.assert_close(alone.z, whole.z[[1]], atol=1e-4, rtol=1e-4)


def test_changed_settings_or_templates_are_not_reused(make_tiny, tmp_path, monkeypatch):
    model, tok = make_tiny("llama", n_layers=4)
    sharpen(model)
    adapter = get_adapter(model)
    requests = [Request.from_record(r) for r in RECORDS[:2]]
    cache = TargetCache(tmp_path / "z")
    calls = _counting(monkeypatch)
    compute_targets(model, tok, adapter, requests, TEMPLATES, hparams_from_dict("memit", FAST), cache=cache)
    compute_targets(model, tok, adapter, requests, TEMPLATES,
                    hparams_from_dict("memit", dict(FAST, clamp_norm_factor=1.5)), cache=cache)
    compute_targets(model, tok, adapter, requests, [["{}"]], hparams_from_dict("memit", FAST), cache=cache)
    # the update rule's settings do not enter z: a different λ reuses it
    compute_targets(model, tok, adapter, requests, TEMPLATES,
                    hparams_from_dict("memit", dict(FAST, mom2_update_weight=3.0)), cache=cache)
    assert calls == [2, 2, 2]


def test_memit_and_alphaedit_share_one_optimisation(make_tiny, tmp_path, monkeypatch):
    """The second method pays no target-value optimisation, and its deltas equal an uncached edit's."""
    model, tok = make_tiny("llama", n_layers=4)
    sharpen(model)
    cache = TargetCache(tmp_path / "z")
    calls = _counting(monkeypatch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    first = edit(model, tok, RECORDS, method="memit", hparams=FAST, stats_cache=False, progress=False,
                 targets_cache=cache)
    model.load_state_dict(base)
    assert calls == [3]
    calls.clear()
    shared = edit(model, tok, RECORDS, method="alphaedit", hparams=FAST, stats_cache=False, progress=False,
                  targets_cache=cache)
    assert calls == []
    model.load_state_dict(base)
    alone = edit(model, tok, RECORDS, method="alphaedit", hparams=FAST, stats_cache=False, progress=False,
                 targets_cache=False)
    assert calls == [3]
    assert first.target_prob == shared.target_prob
    for name in alone.deltas:
        torch.testing.assert_close(shared.deltas[name], alone.deltas[name], atol=1e-5, rtol=1e-4)


def test_damaged_entry_is_recomputed(make_tiny, tmp_path, monkeypatch, capsys):
    model, tok = make_tiny("llama", n_layers=4)
    sharpen(model)
    adapter = get_adapter(model)
    hp = hparams_from_dict("memit", FAST)
    requests = [Request.from_record(r) for r in RECORDS[:1]]
    cache = TargetCache(tmp_path / "z")
    first = compute_targets(model, tok, adapter, requests, TEMPLATES, hp, cache=cache)
    (entry,) = list((tmp_path / "z").glob("z-*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    calls = _counting(monkeypatch)
    again = compute_targets(model, tok, adapter, requests, TEMPLATES, hp, cache=cache)
    assert calls == [1] and "unusable" in capsys.readouterr().err
    torch.testing.assert_close(again.z, first.z)
