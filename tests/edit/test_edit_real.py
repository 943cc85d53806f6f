"""MEMIT and AlphaEdit on the real SmolLM2-135M: a few CounterFact edits flip its greedy answers, the edit
folder reloads in plain transformers with the edit in place, and subtracting the deltas restores the weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from editdecay.data.records import load_edit_records
from editdecay.edit.api import apply_deltas, edit, edit_to_folder, load_deltas
from editdecay.edit.stats import StatsCache
from editdecay.evaluate.scoring import score_continuations

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_thread")]  # one thread: conftest.py



N_EDITS = 4
SMALL = {"mom2_n_tokens": 6000}  # enough for a usable C in a test; the defaults use 100k tokens


def _greedy_hits(model, tok, records) -> list[bool]:
    """True where every target token is the model's top-1 prediction after the prompt (greedy answer)."""
    pairs = [(r.filled_prompt, " " + r.target_new) for r in records]
    return [s.all_argmax for s in score_continuations(model, tok, pairs)]


def test_memit_flips_answers_and_folder_round_trips(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    base, tok = smollm2
    records = load_edit_records("counterfact", n=N_EDITS)
    assert not any(_greedy_hits(base, tok, records))
    model = copy.deepcopy(base)
    out = tmp_path / "edited"
    result = edit_to_folder("smollm2-135m", records, out, method="memit", hparams=SMALL,
                            stats_cache=StatsCache(tmp_path / "stats"), progress=False, model=model, tok=tok)
    assert result.layers == [4, 5, 6, 7, 8]
    hits = _greedy_hits(model, tok, records)
    assert sum(hits) >= N_EDITS - 1, hits

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "memit" and manifest["n_edits"] == N_EDITS
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert _greedy_hits(reloaded, tok, records) == hits  # the edit is in the saved weights
    deltas = load_deltas(out)
    assert len(deltas) == 5
    apply_deltas(reloaded, deltas, sign=-1)
    base_params = dict(base.named_parameters())
    for name, p in reloaded.named_parameters():
        torch.testing.assert_close(p, base_params[name], rtol=0, atol=1e-6, msg=name)
    assert not any(_greedy_hits(reloaded, tok, records))


def test_alphaedit_flips_answers(smollm2, tmp_path):
    base, tok = smollm2
    records = load_edit_records("counterfact", n=N_EDITS)
    model = copy.deepcopy(base)
    result = edit(model, tok, records, method="alphaedit", hparams=SMALL, stats_cache=StatsCache(tmp_path),
                  progress=False)
    hits = _greedy_hits(model, tok, records)
    assert sum(hits) >= N_EDITS - 1, hits
    assert result.state is not None and result.state.n_edits == N_EDITS
    apply_deltas(model, result.deltas, sign=-1)
    base_params = dict(base.named_parameters())
    for name in result.deltas:
        torch.testing.assert_close(dict(model.named_parameters())[name], base_params[name], rtol=0, atol=1e-6)
