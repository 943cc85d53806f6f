"""Where does decay start? Long tracked fine-tunes of edited SmolLM2, edit strength as a factor.

Each setting edits the first N CounterFact records (MEMIT or AlphaEdit; "strong" = the swept defaults,
"weak" = the published Llama settings: v_lr 0.1, clamp 0.75, and MEMIT's λ 15000), then fine-tunes with
the study's recipe (commonsense mix, loss on the whole example) and scores the edits every ``--every``
steps. The trajectories (ES/PS/NS and their magnitudes per point, tokens seen) go to
``benchmarks/results/dose_response/<setting>.json`` and one row per (setting, step) to ``trajectories.csv``.

Resumable: a finished setting is skipped, an interrupted fine-tune resumes from its partial folder, and
target values come from the shared cache (MEMIT and AlphaEdit optimise them once).

    .venv/bin/python scripts/dose_response.py --steps 400 --every 25            # every setting
    .venv/bin/python scripts/dose_response.py --only memit-strong-lora-all
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "dose_response"
WEAK = {"v_lr": 0.1, "clamp_norm_factor": 0.75}
SETTINGS = {  # name -> (method, edit strength, fine-tuning overrides)
    "memit-strong-lora-all": ("memit", "strong", {"type": "lora", "layers": "all"}),
    "alphaedit-strong-lora-all": ("alphaedit", "strong", {"type": "lora", "layers": "all"}),
    "memit-strong-full-edited-5e-6": ("memit", "strong", {"type": "full", "layers": "edited", "lr": 5e-6}),
    "memit-weak-lora-all": ("memit", "weak", {"type": "lora", "layers": "all"}),
    "alphaedit-weak-lora-all": ("alphaedit", "weak", {"type": "lora", "layers": "all"}),
    "memit-strong-full-edited-5e-5": ("memit", "strong", {"type": "full", "layers": "edited", "lr": 5e-5}),
    # full fine-tuning of every layer at LoRA's rate: what a 135M model needs to move (the study's 5e-6 is for 7-8B)
    "memit-strong-full-all-2e-4": ("memit", "strong", {"type": "full", "layers": "all", "lr": 2e-4}),
    "alphaedit-strong-full-all-2e-4": ("alphaedit", "strong", {"type": "full", "layers": "all", "lr": 2e-4}),
}


def edit_hparams(method: str, strength: str) -> dict:
    if strength == "strong":
        return {}
    return {**WEAK, **({"mom2_update_weight": 15000.0} if method == "memit" else {})}


def run_setting(name: str, args: argparse.Namespace, work: Path) -> dict:
    from editdecay import api
    from editdecay.edit.api import edit_to_folder

    method, strength, ft = SETTINGS[name]
    records = api.load_edit_records("counterfact", n=args.n)
    edit_dir = work / f"edit-{method}-{strength}-{args.n}"
    if not (edit_dir / "manifest.json").exists():
        edit_to_folder(args.model, records, edit_dir, method=method, hparams=edit_hparams(method, strength),
                       progress=True, records_source="counterfact", overwrite=True)
    ft_dir = work / f"ft-{name}-{args.steps}"
    cfg = {"data": "commonsense", "modules": "attn,mlp", "max_steps": args.steps, "eval_every": args.every,
           "batch_size": 4, "max_length": 256, "train_on_inputs": True, "seed": 0, **ft}
    t = time.time()
    manifest = api.finetune(str(edit_dir), cfg, ft_dir, track_edits=str(edit_dir), progress=True)
    trajectory = json.loads((ft_dir / "trajectory.json").read_text())
    edit_manifest = json.loads((edit_dir / "manifest.json").read_text())
    tokens_per_step = manifest["tokens"] / max(1, manifest["steps"])
    result = {
        "setting": name, "method": method, "strength": strength, "edit_hparams": edit_hparams(method, strength),
        "n_edits": args.n, "model": args.model, "finetune": manifest["config"], "steps": manifest["steps"],
        "tokens": manifest["tokens"], "loss_tokens": manifest["loss_tokens"], "tokens_per_step": tokens_per_step,
        "train_seconds": manifest["timings"]["train_seconds"], "wall_seconds": time.time() - t,
        "edit_summary": edit_manifest["summary"], "trajectory": trajectory,
    }
    shutil.rmtree(ft_dir, ignore_errors=True)  # the weights are not needed: the trajectory is the result
    return result


def write_csv(out: Path) -> None:
    rows = []
    for path in sorted(out.glob("*.json")):
        res = json.loads(path.read_text())
        points = res["trajectory"] if isinstance(res["trajectory"], list) else res["trajectory"].get("points", [])
        for p in points:
            rows.append({"setting": res["setting"], "method": res["method"], "strength": res["strength"],
                         "ft_type": res["finetune"]["type"], "layers": json.dumps(res["finetune"]["layers"]),
                         "lr": res["finetune"]["lr"], "step": p["step"],
                         "tokens": round(p["step"] * res["tokens_per_step"]),
                         **{k: p.get(k) for k in ("efficacy", "paraphrase", "neighborhood", "efficacy_magnitude")}})
    with open(out / "trajectories.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["setting"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=30, help="edits per setting (default 30)")
    ap.add_argument("--steps", type=int, default=400, help="fine-tuning steps per setting (batch 4)")
    ap.add_argument("--every", type=int, default=25, help="score the edits every K steps")
    ap.add_argument("--only", nargs="*", choices=sorted(SETTINGS), help="run only these settings")
    ap.add_argument("--work", default=str(ROOT / "runs" / "dose_response"), help="edit/fine-tune folders")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SETTINGS):
        out = OUT / f"{name}.json"
        if out.exists():
            print(f"[dose-response] {name}: done already ({out})", file=sys.stderr)
            continue
        print(f"[dose-response] {name}: start", file=sys.stderr, flush=True)
        result = run_setting(name, args, work)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
        write_csv(OUT)
        print(f"[dose-response] {name}: done in {result['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    write_csv(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
