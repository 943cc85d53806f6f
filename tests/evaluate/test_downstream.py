"""downstream.py and perplexity.py: closed forms on a bigram model, the shared-prefix shortcut against
scoring each label separately, generation-mode extraction, seeded sampling, a couple of items per task."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.bigram import IS, BigramLM, bigram_logprob, designed_table

from editdecay.data.corpora import COMMONSENSE_TASKS, MCItem, load_commonsense
from editdecay.errors import ConfigError
from editdecay.evaluate.downstream import (
    evaluate_commonsense,
    extract_label,
    loglik_prompt,
    predict_generate,
    predict_loglik,
    sample_items,
)
from editdecay.evaluate.perplexity import perplexity, perplexity_of_ids
from editdecay.evaluate.scoring import score_continuations

ANSWER, DIGIT1, DIGIT2 = 264, 18, 19  # tiny_tok: " answer1" = [418, 84, 88, 264, 18], " answer2" ends in 19
TRUE0, FALSE0 = 258, 277  # first tokens of " true" and " false"


def item(answer: str, labels=("answer1", "answer2"), index: int = 0) -> MCItem:
    return MCItem("toy", index, "Pick one.\n\nAnswer format: " + "/".join(labels), tuple(labels), tuple(labels), answer)


def test_loglik_closed_form_on_designed_bigram(tiny_tok):
    # after " answer"'s last token the model says "1" with 0.3 and "2" with 0.6; after " is": true 0.4, false 0.5
    model = BigramLM(designed_table(len(tiny_tok), {(ANSWER, DIGIT1): 0.3, (ANSWER, DIGIT2): 0.6,
                                                   (IS, TRUE0): 0.4, (IS, FALSE0): 0.5}))
    items = {"toy": [item("answer2"), item("answer1", index=1), item("answer2", index=2)],
             "yesno": [item("true", ("true", "false")), item("false", ("true", "false"), 1)]}
    out = evaluate_commonsense(model, tiny_tok, items_by_task=items)
    assert out["tasks"]["toy"] == pytest.approx(2 / 3)  # always predicts answer2
    # " true" = 4 tokens, " false" = 3 tokens: compare total log-probs from the bigram's closed form
    v = len(tiny_tok)
    probs = {(IS, TRUE0): 0.4, (IS, FALSE0): 0.5}
    total = {}
    for lab in ("true", "false"):
        ids = tiny_tok(" " + lab, add_special_tokens=False)["input_ids"]
        total[lab] = sum(bigram_logprob(v, probs, p, n) for p, n in zip([IS] + ids[:-1], ids, strict=True))
    best = max(total, key=total.get)
    assert out["tasks"]["yesno"] == (0.5 if best in ("true", "false") else 0.0)
    assert out["mean"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert out["n"] == {"toy": 3, "yesno": 2}


def test_shared_prefix_shortcut_equals_scoring_each_label(make_tiny):
    model, tok = make_tiny("llama", n_layers=2)
    items = [it for task in ("social_i_qa", "boolq", "winogrande") for it in load_commonsense(task)[:2]]
    preds = predict_loglik(model, tok, items, batch_size=3)
    for it, pred in zip(items, preds, strict=True):
        scores = score_continuations(model, tok, [(loglik_prompt(it), " " + lab) for lab in it.labels])
        totals = [s.total_logprob for s in scores]
        assert pred == it.labels[max(range(len(totals)), key=totals.__getitem__)]


def test_extract_label_takes_first_occurrence():
    labels = ("answer1", "answer2", "answer3")
    assert extract_label("the correct answer is answer2, not answer1", labels) == "answer2"
    assert extract_label("no idea", labels) is None
    assert extract_label("true", ("true", "false")) == "true"


def test_generate_mode_matches_manual_greedy_decoding(make_tiny):
    model, tok = make_tiny("llama", n_layers=2)
    items = load_commonsense("boolq")[:2]
    preds = predict_generate(model, tok, items, batch_size=1, max_new_tokens=8)
    from editdecay.data.corpora import alpaca_prompt

    for it, pred in zip(items, preds, strict=True):
        enc = tok(alpaca_prompt(it.instruction), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        assert pred == extract_label(text, it.labels)


def test_sampling_is_seeded_and_limited():
    items = [item("answer1", index=i) for i in range(50)]
    a, b, c = sample_items(items, 5, 0), sample_items(items, 5, 0), sample_items(items, 5, 1)
    assert [x.index for x in a] == [x.index for x in b] != [x.index for x in c]
    assert len(a) == 5 and [x.index for x in a] == sorted(x.index for x in a)
    assert sample_items(items, None, 0) == items
    with pytest.raises(ConfigError):
        sample_items(items, 0, 0)


def test_two_items_per_real_task(make_tiny):
    model, tok = make_tiny("llama", n_layers=2)
    out = evaluate_commonsense(model, tok, "commonsense", limit=2, seed=0)
    assert list(out["tasks"]) == list(COMMONSENSE_TASKS)
    assert out["n"] == dict.fromkeys(COMMONSENSE_TASKS, 2)
    assert all(v in (0.0, 0.5, 1.0) for v in out["tasks"].values())
    assert out["mean"] == pytest.approx(sum(out["tasks"].values()) / 7)
    with pytest.raises(ConfigError, match="mode"):
        evaluate_commonsense(model, tok, "boolq", limit=1, mode="bogus")


def test_perplexity_closed_form_and_striding(tiny_tok, make_tiny):
    probs = {(IS, TRUE0): 0.4}
    v = len(tiny_tok)
    bigram = BigramLM(designed_table(v, probs))
    ids = tiny_tok("the river is true and the city is long", add_special_tokens=False)["input_ids"]
    expected_nll = -sum(bigram_logprob(v, probs, p, n) for p, n in zip(ids[:-1], ids[1:], strict=True)) / (len(ids) - 1)
    for window, stride in [(4, 2), (5, 4), (64, 32), (3, 1)]:
        out = perplexity_of_ids(bigram, ids, window=window, stride=stride)
        assert out["n_tokens"] == len(ids) - 1
        assert out["perplexity"] == pytest.approx(math.exp(expected_nll), rel=1e-5)
    model, tok = make_tiny("llama", n_layers=2)
    full = perplexity_of_ids(model, ids, window=64, stride=32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    ref = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)) / (len(ids) - 1)
    assert full["nll"] == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ConfigError, match="stride"):
        perplexity_of_ids(model, ids, window=8, stride=8)
    corpus = perplexity(model, tok, "wikitext", max_tokens=300, window=128, stride=64)
    assert corpus["n_tokens"] == 299 and corpus["perplexity"] > 1.0
