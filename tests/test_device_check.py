"""The GPU device check stays runnable: its --tiny mode runs on the CPU in seconds and writes every rate."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread: see conftest.py



def _device_check():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "device_check.json"
    report = _device_check().run(["--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["device"] == "cpu" and report["dtype"] == "bfloat16"
    assert set(report["models"]) == {"smollm2", "llama2-7b-shape"}
    for row in report["models"].values():
        assert row["dtype"] == "bfloat16"
        assert row["edit"]["n_edits"] == 4 and row["edit"]["edits_per_s"] > 0
        assert row["lora"]["steps"] == 3 and row["lora"]["tokens_per_s"] > 0 and row["lora"]["n_trained"] > 0
        assert 0 <= row["evaluate"]["summary"]["efficacy"] <= 1
        for phase in ("edit", "evaluate", "lora"):
            assert row[phase]["peak_rss_mb"] > 0  # on CUDA: peak_gpu_mb


def test_device_check_script_and_bad_model_name(tmp_path):
    from editdecay.errors import ConfigError

    assert (ROOT / "scripts" / "device_check.sh").stat().st_mode & 0o111
    with pytest.raises(ConfigError, match="--models"):
        _device_check().run(["--tiny", "--device", "cpu", "--models", "gpt5", "--out", str(tmp_path / "x.json")])
