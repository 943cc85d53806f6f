"""Edit metrics on the real SmolLM2-135M: the unedited model prefers true facts (ES well below 50%, NS well
above), batching does not change a number, and metrics move the right way when the new targets are boosted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from editdecay.data.records import load_edit_records
from editdecay.evaluate.api import evaluate_edits
from editdecay.evaluate.scoring import continuation

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def cf50():
    return load_edit_records("counterfact", n=50)


def test_unedited_smollm2_prefers_true_facts(smollm2, cf50):
    model, tok = smollm2
    out = evaluate_edits(model, tok, cf50, batch_size=32)
    s = out["summary"]
    assert s["n_records"] == 50
    assert s["efficacy"] <= 0.35, s  # well below chance: the model prefers the true object
    assert s["paraphrase"] <= 0.35, s
    assert s["neighborhood"] >= 0.6, s  # neighbours keep their true answers
    for row in out["records"]:  # ES is exactly the sign of the probability difference
        assert row["efficacy"] == float(row["efficacy_magnitude"] > 0)


def test_batched_equals_one_record_at_a_time(smollm2, cf50):
    model, tok = smollm2
    recs = cf50[:4]
    batched = evaluate_edits(model, tok, recs, batch_size=32)["records"]
    single = [evaluate_edits(model, tok, [r], batch_size=1)["records"][0] for r in recs]
    for a, b in zip(batched, single, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "case_id" or not key.endswith("magnitude"):
                assert a[key] == b[key], key
            else:
                assert a[key] == pytest.approx(b[key], abs=1e-4)


class BoostTokens(nn.Module):
    """SmolLM2 with +``bias`` on the logits of chosen tokens: a crude stand-in for a successful edit."""

    def __init__(self, model: nn.Module, token_ids: list[int], bias: float):
        super().__init__()
        self.inner, self.bias = model, bias
        self.register_buffer("ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long))

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits
        logits = logits.clone()
        logits[..., self.ids] += self.bias
        return SimpleNamespace(logits=logits)


def test_boosting_new_targets_raises_efficacy_and_lowers_specificity(smollm2, cf50):
    model, tok = smollm2
    recs = [r for r in cf50 if len(tok(continuation(r.target_new), add_special_tokens=False)["input_ids"]) == 1][:10]
    assert len(recs) == 10
    new_ids = [tok(continuation(r.target_new), add_special_tokens=False)["input_ids"][0] for r in recs]
    before = evaluate_edits(model, tok, recs)["summary"]
    after = evaluate_edits(BoostTokens(model, new_ids, 30.0), tok, recs)["summary"]
    assert after["efficacy"] == 1.0 and after["paraphrase"] == 1.0
    assert after["efficacy_acc"] > before["efficacy_acc"]  # boosted tokens also compete with each other
    assert after["neighborhood"] < before["neighborhood"]
