"""The machine facts every benchmark records beside its figures."""

from __future__ import annotations

import os


def test_machine_info_names_the_cpu_cores_and_memory():
    from editdecay.util.env import machine_info

    info = machine_info()
    assert info["cpus"] == os.cpu_count() and 1 <= info["usable_cpus"] <= info["cpus"]
    assert isinstance(info["cpu_model"], str) and info["platform"]
    if os.path.exists("/proc/cpuinfo"):  # Linux: the model name, not platform.processor()'s often-empty string
        model_lines = [line for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace")
                       if line.startswith("model name")]
        if model_lines:
            assert info["cpu_model"] == model_lines[0].split(":", 1)[1].strip()
    assert info["memory_gb"] is None or info["memory_gb"] > 0


def test_peft_deprecation_noise_is_filtered_and_nothing_else():
    import warnings

    from editdecay.util.env import peft_without_deprecation_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peft_without_deprecation_noise():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                          stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated",
                                                "`is_gradient_checkpointing` is deprecated"]
