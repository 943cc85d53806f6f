"""edits.py: CounterFact (ES/PS/NS, magnitudes, argmax) and zsRE token accuracies against hand-computed values
on a bigram model with designed probabilities; summaries; fluency's n-gram entropy; input errors."""

from __future__ import annotations

import math

import pytest
from helpers.bigram import CITY_A, CITY_B, IN, IS, OF, THE, BigramLM, designed_table

from editdecay.data.records import EditRecord
from editdecay.errors import DataError
from editdecay.evaluate.api import evaluate_edits
from editdecay.evaluate.edits import ngram_entropy, record_metrics

# row " is": the 0.5, of 0.25, city 0.2 ; row " in": the 0.1, of 0.3 ; row " of": the 0.45, of 0.2
PROBS = {(IS, THE): 0.5, (IS, OF): 0.25, (IS, CITY_A): 0.2, (CITY_A, CITY_B): 0.6,
         (IN, THE): 0.1, (IN, OF): 0.3, (OF, THE): 0.45, (OF, OF): 0.2}


@pytest.fixture
def bigram(tiny_tok):
    return BigramLM(designed_table(len(tiny_tok), PROBS))


def cf_record(**kw) -> EditRecord:
    base = dict(case_id="r1", subject="A", prompt="{} is", target_new="the", target_true="of",
                paraphrase_prompts=["B in", "C of"], neighborhood_prompts=["D is"], neighborhood_answers=["of"],
                dataset="counterfact")
    base.update(kw)
    return EditRecord(**base)


def test_counterfact_metrics_single_token(bigram, tiny_tok):
    (row,) = record_metrics(bigram, tiny_tok, [cf_record()])
    assert row["case_id"] == "r1"
    # rewrite: P(new)=0.5 > P(true)=0.25
    assert row["efficacy"] == 1.0
    assert row["efficacy_magnitude"] == pytest.approx(0.5 - 0.25, abs=1e-5)
    assert row["efficacy_acc"] == 1.0
    # paraphrases: " in" -> 0.1 vs 0.3 (fail), " of" -> 0.45 vs 0.2 (success, and top-1)
    assert row["paraphrase"] == 0.5
    assert row["paraphrase_magnitude"] == pytest.approx(((0.1 - 0.3) + (0.45 - 0.2)) / 2, abs=1e-5)
    assert row["paraphrase_acc"] == 0.5
    # neighbourhood: answer "of" 0.25 vs new "the" 0.5 -> the edit leaks: NS 0, NM = 0.25 - 0.5
    assert row["neighborhood"] == 0.0
    assert row["neighborhood_magnitude"] == pytest.approx(0.25 - 0.5, abs=1e-5)
    assert row["neighborhood_acc"] == 0.0


def test_counterfact_multi_token_new_target_uses_mean_per_token_nll(bigram, tiny_tok):
    # new " city" = two tokens with P 0.2 and 0.6: mean NLL -> geometric mean sqrt(0.12) = 0.346 < P(the) = 0.5
    (row,) = record_metrics(bigram, tiny_tok, [cf_record(target_new="city", target_true="the",
                                                         paraphrase_prompts=[], neighborhood_prompts=[],
                                                         neighborhood_answers=[])])
    assert row["efficacy"] == 0.0
    assert row["efficacy_magnitude"] == pytest.approx(math.sqrt(0.2 * 0.6) - 0.5, abs=1e-5)
    assert row["efficacy_acc"] == 0.0  # the first token is not the top-1
    assert "paraphrase" not in row and "neighborhood" not in row


def test_target_with_leading_space_equals_without(bigram, tiny_tok):
    a, b = record_metrics(bigram, tiny_tok, [cf_record(), cf_record(case_id="r2", target_new=" the",
                                                                    target_true=" of")])
    assert {k: v for k, v in a.items() if k != "case_id"} == {k: v for k, v in b.items() if k != "case_id"}


def test_bos_tokenizer_gives_the_same_bigram_metrics(tiny_tok_bos, tiny_tok):
    model = BigramLM(designed_table(len(tiny_tok), PROBS))
    (a,) = record_metrics(model, tiny_tok, [cf_record()])
    (b,) = record_metrics(model, tiny_tok_bos, [cf_record()])
    assert a == b  # a bigram only sees the last prompt token, so BOS changes nothing but must not shift targets


def test_zsre_token_accuracy(bigram, tiny_tok):
    rec = EditRecord(case_id="z", subject="A", prompt="{} is", target_new="city", paraphrase_prompts=["B of"],
                     neighborhood_prompts=["C in"], neighborhood_answers=["of"], dataset="zsre")
    (row,) = record_metrics(bigram, tiny_tok, [rec])
    # " is" -> top is " the" (not " city"[0]); " city"[0] -> top is " city"[1]: 1 of 2 tokens
    assert row["efficacy"] == 0.5
    # " of" -> top is " the": first token wrong, second right
    assert row["paraphrase"] == 0.5
    # " in" -> top is " of" (0.3): the loc answer "of" is top-1
    assert row["neighborhood"] == 1.0
    assert set(row) == {"case_id", "efficacy", "paraphrase", "neighborhood"}


def test_evaluate_edits_summary_means_over_records_having_the_metric(bigram, tiny_tok):
    recs = [cf_record(), cf_record(case_id="r2", target_new="city", target_true="the", paraphrase_prompts=[])]
    out = evaluate_edits(bigram, tiny_tok, recs, batch_size=3)
    s = out["summary"]
    assert s["n_records"] == 2
    assert s["efficacy"] == 0.5
    assert s["paraphrase"] == 0.5  # only r1 has paraphrases
    assert s["neighborhood"] == 0.0
    assert [r["case_id"] for r in out["records"]] == ["r1", "r2"]


def test_batch_size_does_not_change_results(make_tiny):
    model, tok = make_tiny("llama", n_layers=2)
    recs = [cf_record(case_id=str(i), subject=s, target_new=n, target_true=t)
            for i, (s, n, t) in enumerate([("Paris", "France", "Italy"), ("The river", "north", "capital"),
                                           ("x", "y z", "w")])]
    one = evaluate_edits(model, tok, recs, batch_size=1)["records"]
    many = evaluate_edits(model, tok, recs, batch_size=16)["records"]
    for a, b in zip(one, many, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith("magnitude"):
                assert a[key] == pytest.approx(b[key], abs=1e-5)
            else:
                assert a[key] == b[key]


def test_bad_records_are_clear_errors(bigram, tiny_tok):
    with pytest.raises(DataError, match="case_id=r1.*neighborhood_answers"):
        record_metrics(bigram, tiny_tok, [cf_record(neighborhood_answers=[])])
    with pytest.raises(DataError, match="no records"):
        evaluate_edits(bigram, tiny_tok, [])


def test_ngram_entropy_closed_form():
    # tokens a b a b: bigrams {ab: 2, ba: 1}, trigrams {aba: 1, bab: 1}
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy("a a a a") == 0.0


def _tiny_folder(make_tiny, path):
    model, tok = make_tiny("llama", n_layers=2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_cli_evaluate_manifest_records_exactly(make_tiny, tmp_path):
    import json

    from editdecay.cli import main

    model, tok = _tiny_folder(make_tiny, tmp_path / "model")
    recs = [cf_record(case_id="7"), cf_record(case_id="3", target_new="city")]
    manifest = tmp_path / "edit" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"stage": "edit", "method": "memit", "records": [r.to_dict() for r in recs]}))
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", "counterfact", "--records",
                 str(manifest), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["case_id"] for r in result["records"]] == ["7", "3"]
    assert result["summary"]["n_records"] == 2
    for key in ("efficacy", "paraphrase", "neighborhood"):
        assert 0.0 <= result["summary"][key] <= 1.0
    direct = evaluate_edits(model, tok, recs)
    for from_cli, from_api in zip(result["records"], direct["records"], strict=True):
        assert from_cli.keys() == from_api.keys()
        assert [from_cli[k] for k in from_cli if k != "case_id"] == pytest.approx(
            [from_api[k] for k in from_api if k != "case_id"], abs=1e-6)
    # the edit folder itself works as --records too, and --n keeps the first records
    out2 = tmp_path / "ev2.json"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--records", str(manifest.parent), "--n", "1",
                 "--out", str(out2)]) == 0
    assert [r["case_id"] for r in json.loads(out2.read_text())["records"]] == ["7"]


def test_cli_evaluate_bad_inputs_are_one_line_errors(make_tiny, tmp_path, capsys):
    import json

    from editdecay.cli import main

    _tiny_folder(make_tiny, tmp_path / "model")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--records", str(tmp_path / "nope.json"),
                 "--out", str(tmp_path / "x.json")]) == 1
    assert "nope.json: file not found" in capsys.readouterr().err
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"stage": "edit", "records": [{"case_id": "1", "subject": "A"}]}))
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--records", str(bad),
                 "--out", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "manifest.json, record 0, field 'records'" in err and "prompt" in err
    assert not (tmp_path / "x.json").exists()


def test_fluency_is_ngram_entropy_of_prompt_plus_greedy_generation(make_tiny):
    import torch

    model, tok = make_tiny("llama", n_layers=2)
    rec = cf_record(generation_prompts=["The river is", "A city"])
    out = evaluate_edits(model, tok, [rec, cf_record(case_id="r2")], fluency=True)
    texts = []
    for prompt in rec.generation_prompts:
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=100, do_sample=False, pad_token_id=tok.pad_token_id)
        texts.append(prompt + tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    expected = sum(ngram_entropy(t) for t in texts) / 2
    assert out["records"][0]["fluency"] == pytest.approx(expected, rel=1e-6)
    assert "fluency" not in out["records"][1]  # no generation prompts
    assert out["summary"]["fluency"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_model_json_holds_edits_downstream_and_perplexity(make_tiny):
    from editdecay.errors import ConfigError
    from editdecay.evaluate.api import evaluate_model

    model, tok = make_tiny("llama", n_layers=2)
    out = evaluate_model((model, tok), records=[cf_record(), cf_record(case_id="r2")], downstream="boolq,piqa",
                         limit=2, perplexity_text="wikitext", perplexity_tokens=200, progress=False)
    assert out["data"] == "counterfact" and out["summary"]["n_records"] == 2
    assert set(out["downstream"]["tasks"]) == {"boolq", "piqa"} and out["downstream"]["n"] == {"boolq": 2, "piqa": 2}
    assert out["perplexity"]["n_tokens"] == 199
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        evaluate_model((model, tok))
    with pytest.raises(DataError, match="--data zsre but record 'r1'"):
        evaluate_model((model, tok), data="zsre", records=[cf_record()])


def test_cli_evaluate_downstream_only(make_tiny, tmp_path, capsys):
    import json

    from editdecay.cli import main

    _tiny_folder(make_tiny, tmp_path / "model")
    out = tmp_path / "ds.json"
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--downstream", "boolq,obqa", "--limit", "2",
                 "--out", str(out)]) == 0
    ds = json.loads(out.read_text())["downstream"]
    assert set(ds["tasks"]) == {"boolq", "openbookqa"} and ds["n"] == {"boolq": 2, "openbookqa": 2}
    assert ds["mean"] == pytest.approx(sum(ds["tasks"].values()) / 2)
    assert "mean" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--downstream", "hellaswag", "--out",
                 str(out)]) == 1
    assert "unknown commonsense task" in capsys.readouterr().err
