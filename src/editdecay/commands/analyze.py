"""`editdecay analyze`: the analyses that need artifacts, computed (editdecay.analyze) and written into a store.

- ``layer-change --store S``: per-layer weight change of each edit and of the edited fine-tune after it;
- ``frequency --store S``: occurrences of every target in each fine-tuning corpus of the store's runs;
- ``shift --store S`` (or ``--base/--edited/--finetuned`` folders, printed and optionally ``--out`` JSON):
  hidden-state shift caused by editing vs by fine-tuning, at the edited layers.

For a store, one run per (model, method, fine-tuning type, layer selection) is analysed (the report draws one
panel per such configuration), ``--all`` analyses every run. Stage artifacts are looked up as recorded, then
relative to the store's folder. What cannot be analysed (artifacts gone, corpus unreadable) is recorded in the
store's ``analyses`` table with the reason, and the report says so.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from editdecay.api import add_device_args
from editdecay.artifacts import MARKER as STAGE_MARKER

REPORT_KEY = ("model", "method", "ft_type", "layers")
DROPPED = " (a grid drops a full fine-tune's weights once its evaluations are done unless it says keep: [finetune])"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="analyses of artifacts written into a results store (weight change, "
                       "target frequency, activation shift)")
    asub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    lc = asub.add_parser("layer-change", help="per-layer ‖ΔW‖/‖W‖ of each edit and of the fine-tune after it")
    lc.add_argument("--store", required=True, help="results store (SQLite) of a grid")
    lc.add_argument("--all", action="store_true", help="every run, not one per configuration")
    fr = asub.add_parser("frequency", help="whole-word occurrences of each target in each fine-tuning corpus")
    fr.add_argument("--store", required=True, help="results store (SQLite) of a grid")
    s = asub.add_parser("shift", help="|h_ed - h_base| vs |h_ed_ft - h_ed| and their angle, on the edit prompts")
    s.add_argument("--store", help="results store: analyse its runs (base, edit and edited fine-tune stages) and "
                   "write the rows into it")
    s.add_argument("--all", action="store_true", help="with --store: every run, not one per configuration")
    s.add_argument("--base", help="the unedited model (registered name or folder)")
    s.add_argument("--edited", help="edit folder (model + manifest.json with records and layers)")
    s.add_argument("--finetuned", help="the edited model after fine-tuning (folder)")
    s.add_argument("--layers", help="layers to analyse, e.g. 4,5,6 or 4-6 (default: the edited layers)")
    s.add_argument("--n", type=int, help="analyse only the first N edit records")
    s.add_argument("--batch-size", type=int, default=16)
    add_device_args(s, what="the three models")
    s.add_argument("--out", metavar="FILE", help="write the per-layer and per-record results as JSON")
    p.set_defaults(handler=run, analyze_parser=p)


def run(args: argparse.Namespace) -> int:
    if args.analysis == "layer-change":
        return _report(layer_change_into(args.store, every_run=args.all))
    if args.analysis == "frequency":
        return _report(frequency_into(args.store))
    if args.analysis == "shift":
        return _shift(args)
    args.analyze_parser.print_help()
    return 2


def _report(lines: list[str]) -> int:
    for line in lines:
        print(line)
    return 0


def _shift(args: argparse.Namespace) -> int:
    from editdecay.errors import ConfigError

    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n})")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {args.batch_size})")
    folders = (args.base, args.edited, args.finetuned)
    if args.store is None and not all(folders):
        raise ConfigError("analyze shift: pass --store S, or --base, --edited and --finetuned")
    if args.store is not None and any(folders):
        raise ConfigError("analyze shift: --store analyses the store's own stages; drop --base/--edited/--finetuned")
    from editdecay.api import activation_shift, apply_device_args, format_shift
    from editdecay.util.io import atomic_write_json
    from editdecay.util.layers import parse_layer_list

    layers = parse_layer_list(args.layers) if args.layers else None
    device, dtype = apply_device_args(args)

    def analyse(base: str, edited: str, finetuned: str) -> dict[str, Any]:
        return activation_shift(base, edited, finetuned, layers=layers, n=args.n, device=device, dtype=dtype,
                                batch_size=args.batch_size)

    if args.store is not None:
        return _report(shift_into(args.store, analyse, every_run=args.all))
    result = analyse(args.base, args.edited, args.finetuned)
    print(format_shift(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written: {args.out}")
    return 0


# --- finding a run's folders ----------------------------------------------------------------------------------

def _open(store_path: str | os.PathLike) -> Any:
    """An existing results store, opened for writing (a store of an older schema gains the analysis tables)."""
    from editdecay.api import Store
    from editdecay.errors import DataError

    if not Path(store_path).is_file():
        raise DataError(str(store_path), "results store not found")
    store = Store(store_path)
    if not store.query("SELECT 1 FROM sqlite_master WHERE name = 'runs'") or not store.query("SELECT 1 FROM runs"):
        store.close()
        raise DataError(str(store_path), "holds no runs: not the results store of a grid")
    return store


def model_folder(artifact: str | None, store_path: str | os.PathLike) -> Path | None:
    """The folder a stage's recorded artifact stands for, if its weights are on disk: the artifact itself (a model,
    a deltas-only edit, an adapter-only fine-tune) or the model its stage marker names; a relative path is tried
    from the working directory and from the store's folder (runners record paths relative to where they ran)."""
    from editdecay.api import model_readable
    from editdecay.artifacts import marker_model
    from editdecay.errors import EditDecayError

    if not artifact:
        return None
    path = Path(artifact)
    for candidate in [path] if path.is_absolute() else [path, Path(store_path).resolve().parent / path]:
        if model_readable(candidate):
            return candidate
        if (candidate / STAGE_MARKER).exists():
            try:
                target = Path(marker_model(candidate))
            except EditDecayError:  # weights dropped, or a marker naming no model
                continue
            if model_readable(target):
                return target
    return None


def _stage(run: dict[str, Any], kind: str, edited: bool | None = None) -> dict[str, Any] | None:
    """The run's stage of ``kind``; for finetune, ``edited`` picks the one whose role names the edited model."""
    for st in run["stages"]:
        if st["kind"] != kind or st["status"] != "done":
            continue
        if edited is None or bool(set(re.split(r"[^a-z]+", st["role"].lower())) & {"ed", "edit", "edited"}) == edited:
            return st
    return None


def _chosen_runs(store: Any, every_run: bool, has: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every run, or per configuration of the report's panels the first run for which ``has(run)``."""
    runs = store.run_stage_artifacts()
    if every_run:
        return runs
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        by_key.setdefault(tuple(str(r[k]) for k in REPORT_KEY), []).append(r)
    return [next((r for r in group if has(r)), group[0]) for group in by_key.values()]


# --- the three analyses for a store ---------------------------------------------------------------------------

def layer_change_into(store_path: str | os.PathLike, every_run: bool = False) -> list[str]:
    """Per-layer weight change of the chosen runs' edit and edited fine-tune stages, written into the store."""
    from editdecay.api import edit_change, finetune_change
    from editdecay.errors import EditDecayError

    lines: list[str] = []
    with _open(store_path) as store:
        def folders(run: dict[str, Any]) -> tuple[dict | None, dict | None, Path | None, Path | None]:
            edit, ft = _stage(run, "edit"), _stage(run, "finetune", edited=True)
            return (edit, ft, model_folder(edit["artifact"] if edit else None, store_path),
                    model_folder(ft["artifact"] if ft else None, store_path))

        done_edits: set[str] = set()
        # a grid's fine-tunes of an edited model measure it in their stage: never computed twice
        measured = {r["stage_id"] for r in store.query("SELECT DISTINCT stage_id FROM layer_change")}

        def has(run: dict[str, Any]) -> bool:
            ft = _stage(run, "finetune", edited=True)
            return (ft is not None and ft["stage_id"] in measured) or all(folders(run)[2:])

        for run in _chosen_runs(store, every_run, has):
            ft = _stage(run, "finetune", edited=True)
            if ft is None:
                continue
            if ft["stage_id"] in measured:
                lines.append(f"layer change: {ft['stage_id']} (already in the store, measured by its stage)")
                continue
            edit, ft, edit_dir, ft_dir = folders(run)
            if edit is None or edit_dir is None or ft_dir is None:
                what = "edit" if edit_dir is None else "fine-tune"
                note = f"the {what} artifacts of run {run['run_id']} are not on disk{DROPPED}"
                store.note_analysis("layer_change", ft["stage_id"], "failed", note)
                lines.append(f"skipped: {note}")
                continue
            try:
                if edit["stage_id"] not in done_edits:
                    change, layers = edit_change(edit_dir)
                    store.put_layer_change(edit["stage_id"], dict(change), edited=layers)
                    done_edits.add(edit["stage_id"])
                store.put_layer_change(ft["stage_id"], dict(finetune_change(edit_dir, ft_dir)),
                                       against=edit["stage_id"])
            except (OSError, ValueError, EditDecayError) as exc:
                note = f"cannot read the artifacts of run {run['run_id']} ({exc})"
                store.note_analysis("layer_change", ft["stage_id"], "failed", note)
                lines.append(f"skipped: {note}")
                continue
            lines.append(f"layer change: {ft['stage_id']} (against {edit['stage_id']})")
    return lines


def frequency_into(store_path: str | os.PathLike,
                   corpus_loader: Callable[[str], list[str]] | None = None) -> list[str]:
    """Occurrences of every stored target in each fine-tuning corpus of the store's runs, written into it."""
    from editdecay.api import default_corpus_loader, target_frequency
    from editdecay.errors import EditDecayError

    lines: list[str] = []
    with _open(store_path) as store:
        targets = sorted({r["target_new"] for r in store.query("SELECT DISTINCT target_new FROM records")
                          if r["target_new"]})
        corpora = sorted({r["ft_data"] for r in store.query("SELECT DISTINCT ft_data FROM runs") if r["ft_data"]})
        for corpus in corpora:
            try:
                counts = target_frequency(corpus, targets, corpus_loader or default_corpus_loader)
            except (OSError, EditDecayError) as exc:
                note = f"fine-tuning corpus '{corpus}' could not be loaded ({exc})"
                store.note_analysis("target_frequency", corpus, "failed", note)
                lines.append(f"skipped: {note}")
                continue
            store.put_target_frequency(corpus, counts)
            lines.append(f"target frequency: {corpus} ({len(counts)} targets, {sum(counts.values())} occurrences)")
    return lines


def shift_into(store_path: str | os.PathLike, analyse: Callable[[str, str, str], dict[str, Any]],
               every_run: bool = False) -> list[str]:
    """The activation shift of the chosen runs (base, edit and edited fine-tune folders), written into the store."""
    from editdecay.errors import EditDecayError

    lines: list[str] = []
    with _open(store_path) as store:
        def folders(run: dict[str, Any]) -> list[Path | None]:
            return [model_folder(st["artifact"] if st else None, store_path)
                    for st in (_stage(run, "base"), _stage(run, "edit"), _stage(run, "finetune", edited=True))]

        for run in _chosen_runs(store, every_run, lambda r: all(folders(r))):
            ft = _stage(run, "finetune", edited=True)
            if ft is None:
                continue
            paths = folders(run)
            if not all(paths):
                note = f"the base, edit or fine-tune artifacts of run {run['run_id']} are not on disk{DROPPED}"
                store.note_analysis("activation_shift", ft["stage_id"], "failed", note)
                lines.append(f"skipped: {note}")
                continue
            try:
                result = analyse(*(str(p) for p in paths))
            except (OSError, EditDecayError) as exc:
                note = f"run {run['run_id']}: {exc}"
                store.note_analysis("activation_shift", ft["stage_id"], "failed", note)
                lines.append(f"skipped: {note}")
                continue
            store.put_activation_shift(ft["stage_id"], result["records"],
                                       note=f"{result['n_records']} edit prompts, layers {result['layers']}")
            lines.append(f"activation shift: {ft['stage_id']} ({result['n_records']} prompts, layers "
                         f"{result['layers']})")
    return lines
