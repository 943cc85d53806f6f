"""Fine-tuning and downstream corpora from the shared data, and their bad-input errors."""

from __future__ import annotations

import json
import re

import pytest

from editdecay.data import corpora
from editdecay.errors import DataError

TEST_SIZES = {"boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "winogrande": 1267, "ARC-Easy": 2376,
              "ARC-Challenge": 1172, "openbookqa": 500}


@pytest.mark.parametrize("task,size", TEST_SIZES.items())
def test_commonsense_test_sets(task, size):
    items = corpora.load_commonsense(task)
    assert len(items) == size
    for item in items[:50]:
        assert item.answer in item.labels
        assert len(item.options) == len(item.labels)
        assert all(opt and "Answer format" not in opt for opt in item.options)


def test_commonsense_option_texts_parsed():
    item = corpora.load_commonsense("winogrande")[0]
    assert item.labels == ("option1", "option2") and item.options == ("Sarah", "Maria")
    arc = corpora.load_commonsense("arc-e")[0]
    assert arc.task == "ARC-Easy" and len(arc.options) == 4


def test_commonsense_train_alpaca_hotpot_text():
    train = corpora.load_commonsense_train()
    assert len(train) == 17754
    assert train[0].prompt.startswith("Below is an instruction") and train[0].response.startswith("the correct answer is")
    assert "### Response:\n" in train[0].prompt
    assert len(corpora.load_alpaca()) == 1000
    hotpot = corpora.load_hotpotqa()
    assert len(hotpot) == 500 and hotpot[0].response == "Chief of Protocol"
    wiki = corpora.load_text("wikipedia")
    assert len(wiki) == 30
    text = corpora.load_text("wikitext")
    assert all("\r" not in doc for doc in text)
    assert not any(re.fullmatch(r"=+ .* =+", doc) for doc in text)  # headings dropped
    assert corpora.load_finetune_corpus("commonsense:boolq")[0].response in ("the correct answer is true",
                                                                              "the correct answer is false")
    plain = corpora.load_finetune_corpus("wikipedia")
    assert plain[0].prompt == "" and plain[0].response


def test_finetune_corpus_files_and_errors(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"prompt": "Q: 1+1?", "response": "2"}) + "\n")
    assert corpora.load_finetune_corpus(good)[0] == corpora.TrainExample("Q: 1+1?", "2")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x", "output": 3}]))
    with pytest.raises(DataError) as info:
        corpora.load_finetune_corpus(bad)
    assert info.value.index == 1 and info.value.field == "output"
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(DataError, match="record 0"):
        corpora.load_finetune_corpus(odd)
    with pytest.raises(DataError, match="not found"):
        corpora.load_finetune_corpus("nonexistent-corpus")
    with pytest.raises(DataError, match="unknown commonsense task"):
        corpora.load_commonsense("hellaswag")


def test_commonsense_bad_answer(tmp_path):
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"instruction": "Q? Answer format: true/false", "input": "", "output": "",
                                 "answer": "maybe"}]))
    with pytest.raises(DataError) as info:
        corpora.load_commonsense("boolq", path=path)
    assert info.value.field == "answer" and "maybe" in str(info.value)
