"""The fine-tune's last tracking step scores the tracked records on the final weights; evaluating the finished
folder on the same records takes those scores instead of computing them again, and only then."""

from __future__ import annotations

import json
import math

import pytest
from helpers.edits import tiny_edit_folder

import editdecay.evaluate.api as evaluate_api
from editdecay.artifacts import EDIT_SCORES
from editdecay.cli import main as cli_main
from editdecay.errors import DataError
from editdecay.evaluate.api import evaluate_model
from editdecay.finetune.api import finetune

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py

CFG = {"batch_size": 2, "max_length": 64, "warmup_steps": 0, "max_steps": 3, "eval_every": 0, "lr": 5e-2}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: ", "response": f"answer {i} is here"}) + "\n"
                            for i in range(8)))
    return str(path)


@pytest.fixture
def count_scoring(monkeypatch):
    calls = []
    real = evaluate_api.evaluate_edits
    monkeypatch.setattr(evaluate_api, "evaluate_edits", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _assert_same_rows(kept: list[dict], fresh: list[dict]) -> None:
    assert len(kept) == len(fresh)
    for a, b in zip(kept, fresh, strict=True):
        assert set(a) == set(b)
        for key in a:
            if isinstance(a[key], float):
                assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-5), (key, a[key], b[key])
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize("ft_type,adapter_only", [("lora", False), ("lora", True), ("dora", False),
                                                  ("full", False)])
def test_evaluation_takes_the_last_tracked_scores_and_they_equal_scoring_anew(make_tiny, tmp_path, data,
                                                                              count_scoring, ft_type, adapter_only):
    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    records = tiny_edit_folder(model, tok, edit_dir, [1, 2])
    out = tmp_path / "ft"
    finetune(str(edit_dir), {**CFG, "data": data, "type": ft_type}, out, track_edits=edit_dir, progress=False,
             adapter_only=adapter_only)  # from the folder: an adapter-only folder names the model it loads onto
    kept_file = json.loads((out / EDIT_SCORES).read_text())
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert kept_file["step"] == trajectory[-1]["step"] == 3
    assert all(trajectory[-1][k] == v for k, v in kept_file["summary"].items() if isinstance(v, (int, float)))

    count_scoring.clear()
    kept = evaluate_model(str(out), records=records, progress=False)
    assert count_scoring == [] and kept["edit_scores_from"] == str(out / EDIT_SCORES)
    fresh = evaluate_model(str(out), records=records, progress=False, reuse_scores=False)
    assert count_scoring == [1] and "edit_scores_from" not in fresh
    _assert_same_rows(kept["records"], fresh["records"])  # the merged / saved weights score what the tracker saw
    assert kept["summary"].keys() == fresh["summary"].keys()


@pytest.mark.filterwarnings("ignore::editdecay.models.device.PerformanceWarning")  # bfloat16 on an AVX2 CPU
def test_scores_are_taken_only_for_the_same_records_dtype_and_unaltered_file(make_tiny, tmp_path, data,
                                                                           count_scoring, capsys):
    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    records = tiny_edit_folder(model, tok, edit_dir, [1])
    out = tmp_path / "ft"
    finetune(make_tiny("llama")[0], {**CFG, "data": data, "type": "lora"}, out, track_edits=edit_dir,
             tokenizer=tok, progress=False)
    count_scoring.clear()
    for other in ({"records": records[:1]}, {"records": records, "dtype": "bfloat16"},
                  {"records": records, "fluency": True}):
        result = evaluate_model(str(out), progress=False, **other)
        assert "edit_scores_from" not in result
    assert count_scoring == [1, 1, 1]

    # the CLI says where its edit metrics came from, and --rescore scores anew
    argv = ["evaluate", "--model", str(out), "--records", str(edit_dir), "--threads", "1"]
    assert cli_main(argv + ["--out", str(tmp_path / "a.json")]) == 0
    assert "last tracked scores" in capsys.readouterr().out
    assert cli_main(argv + ["--rescore", "--out", str(tmp_path / "b.json")]) == 0
    assert "last tracked scores" not in capsys.readouterr().out
    assert "edit_scores_from" not in json.loads((tmp_path / "b.json").read_text())

    broken = json.loads((out / EDIT_SCORES).read_text())
    del broken["dtype"]
    (out / EDIT_SCORES).write_text(json.dumps(broken))
    with pytest.raises(DataError, match=f"{EDIT_SCORES}.*dtype"):
        evaluate_model(str(out), records=records, progress=False)


def test_a_resumed_run_whose_last_point_was_scored_before_the_interruption_keeps_no_scores(make_tiny, tmp_path,
                                                                                          data):
    """The rows of a point scored by an earlier process are gone (trajectory.json keeps only the summary): the
    folder then holds no scores file and its evaluation scores the records itself."""
    model, tok = make_tiny("llama")
    edit_dir = tmp_path / "edit"
    tiny_edit_folder(model, tok, edit_dir, [1])
    cfg = {**CFG, "data": data, "type": "lora"}

    def interrupt(step, row):
        if step == 3:
            raise KeyboardInterrupt  # after the last step was scored: the checkpoint is at step 3

    with pytest.raises(KeyboardInterrupt):
        finetune(make_tiny("llama")[0], cfg, tmp_path / "ft", track_edits=edit_dir, tokenizer=tok, progress=False,
                 on_step=interrupt)
    manifest = finetune(make_tiny("llama")[0], cfg, tmp_path / "ft", track_edits=edit_dir, tokenizer=tok,
                        progress=False)
    assert manifest["resumed_from"] == 3 and not (tmp_path / "ft" / EDIT_SCORES).exists()
