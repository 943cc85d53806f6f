"""Where a model runs and in what precision: the one place that turns ``--device``/``--dtype``/``--threads`` into torch.

Defaults: the device is CUDA when present, else the CPU (``$EDITDECAY_DEVICE`` overrides the default, so
``editdecay run --device`` reaches every stage it runs in this process or its local workers); the dtype is
float32 (the published numbers are float32; bfloat16 halves weight memory at a small cost in precision);
on the CPU torch uses every core this process may run on, unless ``--threads`` or ``$OMP_NUM_THREADS`` says
otherwise. Editing maths (keys, z, second moments, solves) stays float32/float64 whatever the model's dtype.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editdecay.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DEVICE_ENV = "EDITDECAY_DEVICE"


def default_device() -> str:
    """``$EDITDECAY_DEVICE`` if set, else ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    env = os.environ.get(DEVICE_ENV, "").strip()
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: Any = None, *, flag: str = "--device") -> Any:
    """A ``torch.device`` for ``device`` (None -> :func:`default_device`); refuses ones this machine lacks.

    ``flag`` names the setting in error messages (``--device``, or a grid key such as ``device``).
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip() in ("", "auto")):
        device = default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{flag} {device!r}: not a torch device (use cpu, cuda, cuda:N or mps): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{flag} {device!r}: MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"{flag} {device!r}: unsupported device type {dev.type!r} (use cpu, cuda, cuda:N or mps)")
    return dev


def resolve_dtype(dtype: Any = None, *, flag: str = "--dtype") -> Any:
    """A floating ``torch.dtype`` from a name (float32, bfloat16, float16, or bf16/fp16/fp32) or a dtype.

    None -> float32. ``flag`` names the setting in error messages.
    """
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    elif isinstance(dtype, str):
        name = _ALIASES.get(dtype.strip().lower(), dtype.strip().lower().replace("torch.", ""))
    else:
        raise ConfigError(f"{flag} {dtype!r}: expected one of {', '.join(DTYPES)}")
    if name not in DTYPES:
        raise ConfigError(f"{flag} {dtype!r}: expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)




class PerformanceWarning(UserWarning):
    """A setting that computes the right numbers slowly on this machine."""


NATIVE_HALF_FLAGS = {"bfloat16": {"avx512_bf16", "amx_bf16"}, "float16": {"avx512_fp16", "amx_fp16"}}


def emulated_half_precision(dtype: Any, cpuinfo: str | None = None) -> bool:
    """True where this x86 CPU has no native instructions for ``dtype`` (bfloat16/float16): torch then emulates
    their matrix products, ~8-18x slower than float32 on this project's AVX2 machine. False where unknown."""
    name = dtype_name(dtype)
    if name not in NATIVE_HALF_FLAGS:
        return False
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if not flags or not {"avx2", "sse2"} & set(flags):  # not an x86 flags line: unknown
        return False
    return not NATIVE_HALF_FLAGS[name] & set(flags)


def warn_if_emulated(dtype: Any, device: Any) -> None:
    """The warning a half-precision model on such a CPU gets once it loads (the numbers are right, only slow)."""
    if str(getattr(device, "type", device)) == "cpu" and emulated_half_precision(dtype):
        name = dtype_name(dtype)
        warnings.warn(f"{name} on this CPU: it has none of {', '.join(sorted(NATIVE_HALF_FLAGS[name]))}, so torch "
                      f"emulates {name} matrix products (measured 8-18x slower than float32 on an AVX2 CPU); the "
                      "results are right, but --dtype float32 is faster here and fits a model this machine can hold",
                      PerformanceWarning, stacklevel=3)


def dtype_name(dtype: Any) -> str:
    """'float32' / 'bfloat16' / 'float16' for manifests and JSON."""
    return str(resolve_dtype(dtype)).replace("torch.", "")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None, *, flag: str = "--threads") -> int:
    """Set torch's intra-op CPU threads and return the count.

    ``threads`` wins; else ``$OMP_NUM_THREADS`` (a scheduler or a shared machine asked for it); else every
    available core.
    """
    import torch

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"{flag} {threads!r}: must be an integer >= 1")
        n = threads
    else:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        n = int(env) if env.isdigit() and int(env) > 0 else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def model_dtype(model: Any) -> Any:
    """The dtype of a model's floating weights (the first floating parameter)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: Any) -> Any:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def add_device_args(parser: Any, *, what: str = "the model", dtype_note: str = "") -> None:
    """``--device``, ``--dtype`` and ``--threads`` on a command's parser (one wording for every command)."""
    parser.add_argument("--device", help=f"torch device for {what}: cpu, cuda, cuda:N (default: cuda when present, "
                        f"else cpu; ${DEVICE_ENV} overrides the default)")
    parser.add_argument("--dtype", type=str.lower, choices=DTYPES + tuple(_ALIASES), default=None,
                        help=f"weights' dtype for {what} (default float32){dtype_note}")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: every available core, or $OMP_NUM_THREADS)")


def apply_device_args(args: Any) -> tuple[Any, Any]:
    """(device, dtype) from a namespace with :func:`add_device_args` flags, threads configured on the CPU."""
    device = resolve_device(getattr(args, "device", None))
    dtype = resolve_dtype(getattr(args, "dtype", None))
    configure_threads(getattr(args, "threads", None))
    return device, dtype


# attention implementations whose CPU backward is slow in half precision (measured on torch 2.13, avx512_bf16:
# the CPU flash-attention backward in bfloat16 takes 3-5x the time of the matmul-based eager attention, and
# about a third of a bf16 target-value optimisation)
_SLOW_HALF_CPU_BACKWARD = ("sdpa",)


def backward_attention(model: Any) -> str | None:
    """The attention implementation to switch to for a forward+backward on ``model``, or None to keep its own.

    Only a half-precision (bfloat16/float16) model on the CPU whose attention is ``sdpa`` switches (to
    ``eager``): torch's CPU flash-attention backward has no fast half-precision kernel, while eager attention
    is matmuls (fast in bf16) with its softmax in float32. A float32 model, or any model on a GPU, keeps
    its implementation, so its results do not change.
    """
    import torch

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current not in _SLOW_HALF_CPU_BACKWARD or not hasattr(model, "set_attn_implementation"):
        return None
    if model_device(model).type != "cpu" or model_dtype(model) not in (torch.bfloat16, torch.float16):
        return None
    return "eager"


@contextmanager
def attention_for_backward(model: Any) -> Iterator[str | None]:
    """Run the block with :func:`backward_attention`'s choice (restored afterwards); yields the one switched to."""
    switch = backward_attention(model)
    if switch is None:
        yield None
        return
    before = model.config._attn_implementation
    try:
        model.set_attn_implementation(switch)
    except (ValueError, ImportError, AttributeError):  # an architecture that cannot switch: keep its own
        yield None
        return
    try:
        yield switch
    finally:
        model.set_attn_implementation(before)


__all__ = ["DTYPES", "default_device", "resolve_device", "resolve_dtype", "dtype_name", "configure_threads",
           "available_cores", "model_dtype", "model_device", "add_device_args", "apply_device_args",
           "backward_attention", "attention_for_backward", "PerformanceWarning", "emulated_half_precision",
           "warn_if_emulated"]
