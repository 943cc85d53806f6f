"""--device / --dtype / --threads resolution: defaults, aliases and errors that name the flag."""

from __future__ import annotations

import argparse

import pytest
import torch

from editdecay.errors import ConfigError
from editdecay.models import device as dev


def test_default_device_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device(None) == torch.device("cpu")
    assert dev.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.default_device() == "cuda"
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")  # editdecay run --device sets it for the stages it runs
    assert dev.default_device() == "cpu"


def test_device_errors_name_the_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device 'cuda': CUDA is not available"):
        dev.resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"device 'tpu0': not a torch device"):
        dev.resolve_device("tpu0", flag="device")  # a grid key names itself
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="has 1 CUDA device"):
        dev.resolve_device("cuda:3")


@pytest.mark.parametrize(("name", "want"), [(None, torch.float32), ("float32", torch.float32), ("fp32", torch.float32),
                                            ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
                                            ("float16", torch.float16), ("half", torch.float16),
                                            (torch.bfloat16, torch.bfloat16), ("torch.float16", torch.float16)])
def test_resolve_dtype(name, want):
    assert dev.resolve_dtype(name) is want


@pytest.mark.parametrize("bad", ["int8", "float64", torch.int8, 16])
def test_resolve_dtype_refuses(bad):
    with pytest.raises(ConfigError, match=r"--dtype .*float32, bfloat16, float16"):
        dev.resolve_dtype(bad)


def test_threads_default_to_every_available_core_unless_told(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(dev, "available_cores", lambda: 3)
        assert dev.configure_threads() == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert dev.configure_threads() == 1 and torch.get_num_threads() == 1
        assert dev.configure_threads(2) == 2
        with pytest.raises(ConfigError, match="--threads 0"):
            dev.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_every_model_command_has_device_dtype_threads():
    from editdecay.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {"edit": sub.choices["edit"], "evaluate": sub.choices["evaluate"], "finetune": sub.choices["finetune"],
                "analyze shift": next(a for a in sub.choices["analyze"]._actions
                                      if isinstance(a, argparse._SubParsersAction)).choices["shift"]}
    for name, p in commands.items():
        flags = {o for a in p._actions for o in a.option_strings}
        assert {"--device", "--dtype", "--threads"} <= flags, name
    run_flags = {o for a in sub.choices["run"]._actions for o in a.option_strings}
    assert {"--device", "--threads"} <= run_flags
