"""Edit-record loaders: every format, the shared data files, and every bad-input case."""

from __future__ import annotations

import json

import pytest

from editdecay.cli import main as cli_main
from editdecay.data.records import EditRecord, LoadReport, load_edit_records
from editdecay.errors import DataError

ROME_RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Shayna does this and Yossel goes still. Danielle Darrieux, a native", "Darrieux speaks"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of", "Louis Bonaparte's mother tongue is"],
    "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}

EASYEDIT_RECORD = {
    "case_id": 3087,
    "prompt": "David Robinson professionally plays the sport",
    "target_new": "baseball",
    "subject": "David Robinson",
    "ground_truth": "basketball",
    "rephrase_prompt": "David Robinson's greatest weakness is",
    "locality_prompt": "Shaquille O'Neal plays",
    "locality_ground_truth": "basketball",
}

ZSRE_RECORD = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
}

USER_RECORD = {"subject": "The Eiffel Tower", "prompt": "{} is located in", "target_new": "Rome", "target_true": "Paris",
               "neighborhood_prompts": ["The Louvre is located in"]}


def write(tmp_path, records, name="data.json", jsonl=False):
    path = tmp_path / name
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


# --- formats ------------------------------------------------------------------------------------------


def test_shared_counterfact_easyedit():
    records = load_edit_records("counterfact")
    assert len(records) == 1000
    first = records[0]
    assert first.case_id == "3087" and first.subject == "David Robinson"
    assert first.prompt == "{} professionally plays the sport"
    assert first.filled_prompt == "David Robinson professionally plays the sport"
    assert (first.target_new, first.target_true) == ("baseball", "basketball")
    assert first.paraphrase_prompts == ["David Robinson's greatest weakness is"]
    assert first.neighborhood_prompts == ["Shaquille O'Neal plays"]
    assert first.neighborhood_answers == ["basketball"]
    assert first.dataset == "counterfact"
    assert all("{}" in r.prompt for r in records)


def test_shared_counterfact_10k_and_train_are_disjoint():
    edit = {r.case_id for r in load_edit_records("counterfact-10k")}
    train = {r.case_id for r in load_edit_records("counterfact-train")}
    assert len(edit) == 10000 and len(train) == 10000 and not edit & train


def test_shared_zsre_memit_and_easyedit_targets():
    memit = load_edit_records("zsre")
    assert len(memit) == 1000
    assert memit[0].target_new == "uniform"  # answers[0], as MEMIT/AlphaEdit's code and the study
    assert memit[0].prompt == "What is the product made by {}?"
    assert memit[0].neighborhood_prompts == ["nq question: john goodman's character in the big lebowski?"]
    assert memit[0].neighborhood_answers == ["Walter Sobchak"]
    report = LoadReport("", "", 0, 0)
    easy = load_edit_records("zsre", zsre_target="alt", skip_invalid=True, report=report)
    assert easy[0].target_new == "unmanned aircraft" and easy[0].target_true == "uniform"
    assert report.total == 1000 and len(easy) + len(report.problems) == 1000
    assert all("'alt'" in p for p in report.problems)


def test_rome_format(tmp_path):
    (record,) = load_edit_records(write(tmp_path, [ROME_RECORD]))
    assert record.prompt == "The mother tongue of {} is"
    assert (record.target_new, record.target_true) == ("English", "French")
    assert record.neighborhood_answers == ["French", "French"]
    assert record.generation_prompts == ["Danielle Darrieux's mother tongue is"]
    assert record.attribute_prompts == ["J.R.R. Tolkien is a native speaker of"]


def test_user_jsonl(tmp_path):
    path = write(tmp_path, [USER_RECORD, {"subject": "Mars", "prompt": "Mars orbits the", "target_new": "Moon"}],
                 name="facts.jsonl", jsonl=True)
    first, second = load_edit_records(path)
    assert first.neighborhood_answers == ["Paris"]
    assert second.prompt == "{} orbits the" and second.target_true is None
    assert (first.case_id, second.case_id) == ("0", "1")


def test_roundtrip_and_n(tmp_path):
    records = load_edit_records("counterfact", n=3)
    assert len(records) == 3
    assert [EditRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records] == records


def test_template_with_other_braces(tmp_path):
    rec = dict(USER_RECORD, prompt="In {} (code {x}) is")
    (record,) = load_edit_records(write(tmp_path, [rec]))
    assert record.filled_prompt == "In The Eiffel Tower (code {x}) is"


# --- bad input ----------------------------------------------------------------------------------------

BAD_CASES = [
    ("subject not in prompt", EASYEDIT_RECORD, {"subject": "Michael Jordan"}, "prompt", "does not occur"),
    ("empty target", EASYEDIT_RECORD, {"target_new": "  "}, "target_new", "empty"),
    ("missing field", EASYEDIT_RECORD, {"subject": None}, "subject", "missing"),
    ("wrong type", EASYEDIT_RECORD, {"subject": 42}, "subject", "expected a string"),
    ("wrong type list", EASYEDIT_RECORD, {"rephrase_prompt": [1]}, "rephrase_prompt[0]", "expected a string"),
    ("rome missing rewrite", ROME_RECORD, {"requested_rewrite": None}, "requested_rewrite", "missing"),
    ("rome empty target", ROME_RECORD, {"requested_rewrite": dict(ROME_RECORD["requested_rewrite"],
                                                                    target_new={"str": ""})},
     "requested_rewrite.target_new", "empty"),
    ("rome subject missing", ROME_RECORD, {"requested_rewrite": dict(ROME_RECORD["requested_rewrite"],
                                                                       prompt="The mother tongue is")},
     "requested_rewrite.prompt", "does not occur"),
    ("zsre answers empty", ZSRE_RECORD, {"answers": []}, "answers", "empty"),
    ("zsre answers wrong type", ZSRE_RECORD, {"answers": "uniform", "src": 3}, "src", "expected a string"),
    ("zsre subject not in src", ZSRE_RECORD, {"subject": "Apple"}, "src", "does not occur"),
    ("user target wrong type", USER_RECORD, {"target_new": 5}, "target_new", "expected a string"),
    ("user two templates", USER_RECORD, {"prompt": "{} and {} are"}, "prompt", "exactly one"),
]


@pytest.mark.parametrize("name,base,change,field,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record_names_file_record_field(tmp_path, name, base, change, field, message):
    bad = {k: v for k, v in {**base, **change}.items() if v is not None}
    path = write(tmp_path, [base, bad])
    with pytest.raises(DataError) as info:
        load_edit_records(path)
    err = info.value
    assert err.path == str(path) and err.index == 1 and err.field == field
    assert message in str(err) and str(path) in str(err) and "record 1" in str(err)


def test_skip_invalid_reports_and_skips(tmp_path):
    bad = dict(EASYEDIT_RECORD, case_id=1, subject="Nobody")
    path = write(tmp_path, [EASYEDIT_RECORD, bad, dict(EASYEDIT_RECORD, case_id=2)])
    report = LoadReport("", "", 0, 0)
    records = load_edit_records(path, skip_invalid=True, report=report)
    assert [r.case_id for r in records] == ["3087", "2"]
    assert len(report.problems) == 1 and "record 1" in report.problems[0]


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_edit_records(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"subject": "x",')
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        load_edit_records(broken)
    lines = tmp_path / "broken.jsonl"
    lines.write_text(json.dumps(USER_RECORD) + "\n{oops\n")
    with pytest.raises(DataError, match="line 2"):
        load_edit_records(lines)
    with pytest.raises(DataError, match="no records"):
        load_edit_records(write(tmp_path, [], name="empty.json"))
    with pytest.raises(DataError, match="cannot tell the format"):
        load_edit_records(write(tmp_path, [{"foo": 1}], name="odd.json"))
    with pytest.raises(DataError, match="expected a JSON object"):
        load_edit_records(write(tmp_path, [USER_RECORD, 3], name="mixed.json"))
    with pytest.raises(DataError, match="duplicate case_id"):
        load_edit_records(write(tmp_path, [EASYEDIT_RECORD, EASYEDIT_RECORD], name="dup.json"))


def test_data_inspect_cli(tmp_path, capsys):
    bad = dict(EASYEDIT_RECORD, case_id=1, target_new="")
    path = write(tmp_path, [EASYEDIT_RECORD, bad])
    assert cli_main(["data", "inspect", str(path)]) == 1  # a validation command fails on any problem
    out = capsys.readouterr().out
    assert "counterfact-easyedit" in out and "2 (1 valid, 1 with problems)" in out
    assert "record 1, field 'target_new'" in out and "David Robinson" in out


def test_data_inspect_exit_status(tmp_path, capsys):
    """0 only when every record is valid; 1 when some or all records have problems."""
    good = write(tmp_path, [EASYEDIT_RECORD, dict(EASYEDIT_RECORD, case_id=1)], name="good.json")
    assert cli_main(["data", "inspect", str(good)]) == 0
    assert "2 (2 valid, 0 with problems)" in capsys.readouterr().out
    bad = dict(EASYEDIT_RECORD, case_id=1, target_new="")
    all_bad = write(tmp_path, [dict(bad, case_id=0), bad], name="bad.json")
    assert cli_main(["data", "inspect", str(all_bad)]) == 1
    assert "2 (0 valid, 2 with problems)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["data", "inspect", "--help"])
    assert "exit status" in " ".join(capsys.readouterr().out.lower().split())
