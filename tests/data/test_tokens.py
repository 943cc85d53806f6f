"""The pad-token fallback, written once (``data.tokens.pad_token_id``): the statistics, the editor, the scorer and
fine-tuning pad with the same id, also for a tokenizer that has no pad token."""

from __future__ import annotations

import copy
import re

import pytest
from helpers import ROOT

from editdecay.data.tokens import pad_token_id

pytestmark = [pytest.mark.usefixtures("one_thread"),  # one intra-op thread: see conftest.py
              pytest.mark.filterwarnings("ignore::editdecay.edit.stats.StatsWarning")]  # tiny budgets are low


@pytest.fixture
def no_pad_tok(tiny_tok):
    """The tiny tokenizer without a pad token, its EOS moved off id 0 (so 'EOS' and '0' tell apart)."""
    tok = copy.deepcopy(tiny_tok)
    tok.pad_token = None
    tok.eos_token = "<bos>"
    assert tok.pad_token_id is None and tok.eos_token_id == 1
    return tok


def test_helper_falls_back_to_eos_then_zero(no_pad_tok, tiny_tok):
    assert pad_token_id(tiny_tok) == tiny_tok.pad_token_id
    assert pad_token_id(no_pad_tok) == no_pad_tok.eos_token_id == 1
    bare = copy.deepcopy(no_pad_tok)
    bare.eos_token = None
    assert bare.eos_token_id is None and pad_token_id(bare) == 0


def test_statistics_editor_scorer_and_finetuning_pad_with_the_helpers_id(make_tiny, no_pad_tok, monkeypatch):
    from editdecay.data.corpora import TrainExample
    from editdecay.edit import prompts, stats
    from editdecay.evaluate import scoring
    from editdecay.finetune.data import TrainData
    from editdecay.models.arch import get_adapter

    model, _ = make_tiny("llama", n_layers=2)
    adapter = get_adapter(model)
    seen: dict[str, list] = {"stats": [], "scoring": [], "generate": []}

    collect = stats._collect

    def spy_collect(*args, **kwargs):
        seen["stats"].append(args[7])  # pad_id
        return collect(*args, **kwargs)

    score_ids = scoring.score_token_ids

    def spy_score(*args, **kwargs):
        seen["scoring"].append(kwargs["pad_id"])
        return score_ids(*args, **kwargs)

    generate = model.generate

    def spy_generate(*args, **kwargs):
        seen["generate"].append(kwargs["pad_token_id"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(stats, "_collect", spy_collect)
    monkeypatch.setattr(scoring, "score_token_ids", spy_score)
    monkeypatch.setattr(model, "generate", spy_generate)

    # samples mode pads windows of unequal length: the one pass and the reference code's per-layer passes
    one = stats.second_moments(model, no_pad_tok, adapter, [1], n_samples=6, seq_len=64, batch_size=3, cache=None)
    per = stats.second_moments_per_layer(model, no_pad_tok, adapter, [1], n_samples=6, seq_len=64, batch_size=3)
    assert one.cov[1].shape == per[1].shape
    scoring.score_continuations(model, no_pad_tok, [("The capital of France is", "Paris")])
    scoring.score_alternatives(model, no_pad_tok, [("The capital of France is", ["Paris", "Rome"])])
    prompts.context_templates(model, no_pad_tok, ((4, 1),))
    data = TrainData([TrainExample("Say hi.", "hi")], no_pad_tok, max_length=16, batch_size=1, seed=0)

    eos = no_pad_tok.eos_token_id
    assert seen["stats"] == [eos, eos]
    assert seen["scoring"] == [eos, eos]
    assert seen["generate"] == [eos]
    assert data.pad_id == eos


def test_the_fallback_is_written_once():
    """No module but data/tokens.py picks a pad id itself (models/registry.set_pad_token sets a tokenizer's)."""
    pattern = re.compile(r"pad_token_id is (not )?None|eos_token_id or|pad_token_id=tok(enizer)?\.pad_token_id")
    src = ROOT / "src" / "editdecay"
    found = [f"{path.relative_to(src)}:{n}" for path in sorted(src.rglob("*.py"))
             if path.name != "tokens.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
    assigns = [path.relative_to(src).as_posix() for path in sorted(src.rglob("*.py"))
               if re.search(r"\.pad_token = ", path.read_text())]
    assert assigns == ["models/registry.py"], assigns
