"""`finetune`: an (edited) model + settings -> a fine-tuned model folder with its log, trajectory and manifest.

The output folder (docs/design.md, "Fine-tune folder") is a merged Hugging Face model folder that plain
transformers loads, plus ``adapter/`` for LoRA/DoRA, ``manifest.json``, ``train_log.jsonl`` and, with edit
tracking, ``trajectory.json``. While training, checkpoints and logs live in ``<out>.partial/``; the final
folder appears in one rename when everything is written. A run is identified by the hash of its settings,
base weights, data and tracked edits: an output or partial folder of a different run is refused unless
``overwrite=True``, and rerunning a finished run returns its manifest without training again.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.artifacts import (
    ADAPTER,
    EDIT_SCORES,
    MANIFEST,
    TRAJECTORY,
    is_edit_folder,
    read_edit_manifest,
    read_finetune_manifest,
    write_finetune_manifest,
)
from editdecay.artifacts import TRAIN_LOG as LOG
from editdecay.data.records import records_from_manifest, records_hash
from editdecay.errors import ConfigError, DataError
from editdecay.finetune import select as sel
from editdecay.finetune.config import FinetuneConfig
from editdecay.finetune.data import TrainData, load_examples
from editdecay.finetune.train import DecayTracker, train
from editdecay.models.arch import get_adapter
from editdecay.models.registry import set_pad_token
from editdecay.preserve.strategy import Preserve
from editdecay.util.env import seed_everything
from editdecay.util.io import atomic_dir, atomic_write_json, read_json, stable_hash


def model_fingerprint(model: nn.Module) -> str:
    """A cheap content hash of the weights (name, shape, sum, abs-sum per tensor): tells runs on different bases apart."""
    rows = []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().double()
            rows.append((name, list(tensor.shape), round(float(t.sum()), 6), round(float(t.abs().sum()), 6)))
    return stable_hash(rows)


EXACT_AT_START = ("full", "lora")  # step 0 computes exactly the input model (LoRA: B = 0 adds exact zeros)


def start_point_file(folder: str | os.PathLike, model: nn.Module, fingerprint: str, cfg: FinetuneConfig,
                     records: list, source: str, exact: bool = True) -> Path | None:
    """Where the step-0 tracking point of this fine-tune is shared, or None where step 0 is not the input model
    bit for bit (DoRA rescales W by its column norms; a preserve strategy is applied): named by the input
    (``source``: a grid's content-addressed stage folder, and ``fingerprint`` of its weights, taken before any
    adapter is injected), the tracked records, the downstream sample, dtype and device: everything the point
    depends on, nothing of the fine-tuning."""
    if cfg.type not in EXACT_AT_START or not exact:
        return None
    param = next(model.parameters())
    key = stable_hash({"source": source, "model": fingerprint,
                       "records": [r.to_dict() for r in records], "downstream": list(cfg.downstream_tasks or []),
                       "downstream_n": cfg.downstream_n, "dtype": str(param.dtype), "device": param.device.type})
    return Path(folder) / f"start-{key[:24]}.json"


def _edit_manifest(track_edits: str | os.PathLike | None, edit_dir: str | os.PathLike | None,
                   model_dir: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """The edit manifest for 'edited' layers and tracking: --track-edits, else edit_dir, else the model folder's."""
    for candidate in (track_edits, edit_dir):
        if candidate is not None:
            return read_edit_manifest(candidate), str(Path(candidate) / MANIFEST)
    if model_dir is not None and is_edit_folder(model_dir):
        return read_edit_manifest(model_dir), str(model_dir / MANIFEST)
    return None, None


def _tracked_records(manifest: dict[str, Any], source: str) -> list:
    records = records_from_manifest(manifest, source)
    if not records:
        raise DataError(source, "the edit manifest lists no records to track", field="records")
    return records


def _prepare_dirs(out: Path, work: Path, run_hash: str, overwrite: bool) -> dict[str, Any] | None:
    """Refuse folders of a different run; return the manifest when this exact run is already finished."""
    if out.exists():
        try:
            manifest: dict[str, Any] | None = read_finetune_manifest(out)
        except DataError:
            manifest = None
        if manifest is not None and manifest["run_hash"] == run_hash and not overwrite:
            return manifest
        if not overwrite:
            what = "a different fine-tuning run" if manifest is not None else "something that is not a fine-tune folder"
            raise ConfigError(f"output folder {out} holds {what}; choose another --out or pass --overwrite")
    if work.exists():
        marker = work / "run.json"
        same = marker.exists() and read_json(marker).get("run_hash") == run_hash
        if overwrite or not same:
            if not overwrite:
                raise ConfigError(
                    f"{work} holds an unfinished different fine-tuning run; pass --overwrite to discard it"
                )
            shutil.rmtree(work)
    return None


def finetune(
    model_or_path: nn.Module | str | os.PathLike,
    config: FinetuneConfig | dict[str, Any] | None,
    out_dir: str | os.PathLike,
    track_edits: str | os.PathLike | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    edit_dir: str | os.PathLike | None = None,
    device: Any = None,
    dtype: Any = None,
    on_step: Any = None,
    preserve_edits: str | os.PathLike | None = None,
    adapter_only: bool = False,
    start_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fine-tune and write the fine-tune folder; return its manifest.

    ``model_or_path``: a model folder / registered name (loaded here), or a loaded model (trained in place:
    deep-copy it first if you need the original). ``track_edits``: an edit folder whose records are scored
    every ``eval_every`` steps. ``edit_dir``: where 'edited' layers come from when not tracking (default: the
    model folder itself when it is an edit folder). ``preserve_edits``: the edit folder whose edits
    ``cfg.preserve_strategy`` keeps (default: the edit folder found for tracking / 'edited' layers; see
    editdecay.preserve and docs/preserve.md). ``adapter_only`` (LoRA/DoRA): write the adapter and the
    manifest but no merged model copy; loading the folder merges the adapter into the model it started from.
    ``start_cache``: a folder where the tracker's step-0 scores are shared by every fine-tune that starts from
    the same model (a grid passes its work folder's; see :func:`start_point_file`).
    """
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)
    cfg.validate()
    out = Path(out_dir)
    work = out.with_name(out.name + ".partial")
    started = time.time()

    model_dir: Path | None = None
    if isinstance(model_or_path, (str, os.PathLike)):
        from editdecay.models.registry import load_model, resolve_model

        resolved = resolve_model(model_or_path)
        model_dir = Path(resolved) if not isinstance(resolved, str) else None
        model, loaded_tok = load_model(model_or_path, device=device, dtype=dtype)
        tokenizer = tokenizer or loaded_tok
        base_model = str(model_dir.resolve() if model_dir is not None else model_or_path)
    else:
        model = model_or_path
        if tokenizer is None:
            raise ConfigError("finetune() got a model object but no tokenizer: pass tokenizer=")
        base_model = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        if device is not None or dtype is not None:
            from editdecay.models.device import resolve_device, resolve_dtype

            model.to(device=resolve_device(device) if device is not None else None,
                     dtype=resolve_dtype(dtype) if dtype is not None else None)
    set_pad_token(tokenizer)
    # the edit folder being preserved also tells which layers are 'edited'
    edit_manifest, edit_manifest_path = _edit_manifest(track_edits, edit_dir if edit_dir is not None else
                                                       preserve_edits, model_dir)
    records = _tracked_records(edit_manifest, edit_manifest_path) if track_edits is not None else None
    if cfg.downstream_tasks and records is None:
        raise ConfigError("downstream_tasks are evaluated by the decay tracker: pass --track-edits too")

    adapter = get_adapter(model)
    selection = sel.select(model, cfg, edit_manifest)  # fails on a bad selection before any folder is made
    if preserve_edits is not None and cfg.preserve_strategy == "none":
        raise ConfigError("--preserve-edits given without a strategy: add --strategy freeze|nullspace|replay|reedit")
    preserve = Preserve.build(cfg, preserve_edits if preserve_edits is not None else
                              (Path(edit_manifest_path).parent if edit_manifest_path else None), model)
    if preserve is not None and preserve.frozen_modules():
        selection = sel.without_modules(selection, preserve.frozen_modules(), "preserve_strategy='freeze'")
    peft_config = sel.lora_config(model, selection, cfg) if cfg.type != "full" else None
    examples = load_examples(cfg.data, cfg.max_examples)
    if preserve is not None:
        examples = preserve.examples(examples)  # replay mixes the edit facts in

    identity = {"config": cfg.run_hash(), "model": model_fingerprint(model), "data": cfg.data,
                "edited_layers": edit_manifest["layers"] if edit_manifest is not None else None,
                "tracked": records_hash(records) if records is not None else None}
    if preserve is not None:
        identity["preserve"] = preserve.identity()
    run_hash = stable_hash(identity)
    start = (start_point_file(start_cache, model, identity["model"], cfg, records, source=base_model,
                              exact=preserve is None) if start_cache is not None and records is not None else None)
    done = _prepare_dirs(out, work, run_hash, overwrite)
    if done is not None:
        print(f"[editdecay] {out} already holds this finished run; not training again", file=sys.stderr)
        return done
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "run.json", {"run_hash": run_hash, "identity": identity, "config": cfg.to_dict()})

    if preserve is not None:
        preserve.before_training(model, tokenizer, progress)  # edit keys (nullspace), z and C (reedit)
    seed_everything(cfg.seed)
    if cfg.type == "full":
        sel.apply_full_selection(model, selection)
        train_module: nn.Module = model
    else:
        from peft import get_peft_model

        from editdecay.util.env import peft_without_deprecation_noise

        model.requires_grad_(False)
        with peft_without_deprecation_noise():
            train_module = get_peft_model(model, peft_config)
    if preserve is not None:
        preserve.attach(train_module, cfg.type)  # nullspace: bind the projection (may freeze a bias/magnitude)
    trained = [(n, p.numel()) for n, p in train_module.named_parameters() if p.requires_grad]

    data = TrainData(examples, tokenizer, cfg.max_length, cfg.batch_size, cfg.seed, cfg.train_on_inputs)
    tracker = None
    if records is not None:
        tracker = DecayTracker(records, tokenizer, work / TRAJECTORY, cfg.downstream_tasks, cfg.downstream_n,
                               start_cache=start)
    result = train(train_module, data, cfg, work, eval_model=model, tracker=tracker, progress=progress,
                   on_step=on_step, after_update=preserve.after_update if preserve is not None else None)

    form = "adapter" if adapter_only and cfg.type != "full" else "model"
    dtype_trained = next(model.parameters()).dtype  # bf16 trains via float32 masters
    with atomic_dir(out) as tmp:
        if cfg.type == "full":
            if preserve is not None:
                preserve.after_training(model, tokenizer, progress)
            model.save_pretrained(tmp)
        else:
            train_module.save_pretrained(tmp / ADAPTER)
            if not adapter_only or (preserve is not None and preserve.uses_final_model):
                # the merged model, in memory even for an adapter-only folder when the strategy needs it: reedit
                # writes into it (an adapter-only folder keeps the re-edit's deltas beside the adapter, and
                # loading it applies them after the merge), nullspace measures its residual on it
                merged = train_module.merge_and_unload()
                if preserve is not None:
                    preserve.after_training(merged, tokenizer, progress)
                if not adapter_only:
                    merged.save_pretrained(tmp)
        if form != "adapter":
            tokenizer.save_pretrained(tmp)
        shutil.copy2(work / LOG, tmp / LOG)
        if tracker is not None:
            shutil.copy2(work / TRAJECTORY, tmp / TRAJECTORY)
            scores = tracker.final_scores(result.steps)
            if scores is not None and (preserve is None or not preserve.changes_final_model):
                atomic_write_json(tmp / EDIT_SCORES, scores)  # what the saved weights score: evaluation reuses it
        total_seconds = time.time() - started
        if preserve is not None:
            preserve.write(tmp)
        manifest = write_finetune_manifest(
            tmp, type=cfg.type, layers=selection.layers, modules=selection.projections,
            target_modules=selection.module_names, trained=trained,
            trained_per_layer=sel.count_per_layer(trained, adapter), base_model=base_model,
            edit_manifest=edit_manifest_path, tracked_records=len(records) if records is not None else 0,
            data=cfg.data, n_examples=len(examples), config=cfg.to_dict(), learning_rate=cfg.learning_rate,
            run_hash=run_hash, identity=identity, steps=result.steps, resumed_from=result.resumed_from,
            tokens=result.tokens, loss_tokens=result.loss_tokens, final_loss=result.final_loss,
            train_seconds=result.train_seconds, total_seconds=total_seconds, seed=cfg.seed, dtype=dtype_trained,
            tracked=tracker is not None, form=form, preserve=preserve.manifest() if preserve is not None else None)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
