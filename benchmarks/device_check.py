"""Device check: edit, LoRA and evaluate on SmolLM2 and on a random Llama-2-7B-shaped model -> JSON of rates.

    python benchmarks/device_check.py                      # on a GPU: 100 edits, 100 LoRA steps, bf16
    python benchmarks/device_check.py --tiny --device cpu  # tiny shapes, seconds on a CPU (the test runs this)
    scripts/device_check.sh                                # the same, with the project's venv

For each model: MEMIT writes ``--n-edits`` CounterFact facts (default hyperparameters, second moments over
``--mom2-n-tokens`` tokens, nothing cached), the edited model is scored on them, then LoRA trains
``--lora-steps`` steps on the commonsense mix. Recorded per phase: seconds, edits/s, records/s, fine-tuning
tokens/s and peak memory (``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS otherwise).
The 7B-shaped model is Llama-2-7B's config (4096 wide, 11008 MLP, 32 layers, 32 heads) with SmolLM2's
tokenizer (so its vocabulary is 49,152, not 32,000), built with random weights directly on the device: no
download. ``--tiny`` swaps both models for 4-layer, 64-wide random Llamas and a trained-in-place tokenizer.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "device_check.json"


def _llama7b_config(vocab_size: int, tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=vocab_size, max_position_embeddings=512,
                           tie_word_embeddings=False)
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=vocab_size, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


def random_model(config, tok, device, dtype, seed: int = 0):
    """A randomly initialised model built straight on ``device`` in ``dtype`` (no CPU copy, no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


class Meter:
    """Seconds and peak memory of one phase (CUDA: allocator peak; CPU: the process's peak RSS so far)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.seconds = time.perf_counter() - self.t0
        return False

    def row(self, **extra: Any) -> dict[str, Any]:
        key = "peak_gpu_mb" if self.cuda else "peak_rss_mb"
        return {"seconds": round(self.seconds, 3), key: round(self.peak_mb, 1), **extra}


def check_model(name: str, model, tok, args, device, work: Path) -> dict[str, Any]:
    from editdecay import api
    from editdecay.finetune.api import finetune

    records = api.load_edit_records("counterfact", n=args.n_edits)
    overrides: dict[str, Any] = {"mom2_n_tokens": args.mom2_n_tokens}
    if args.tiny:
        overrides.update(v_num_grad_steps=3, mom2_seq_len=64, context_template_length_params=[[6, 2]])
    out: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                           "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    with Meter(device) as m:
        result = api.edit(model, tok, records, method="memit", overrides=overrides, stats_cache=False,
                          targets_cache=False, progress=args.progress)
    out["edit"] = m.row(n_edits=len(records), edits_per_s=round(len(records) / m.seconds, 4),
                        layers=result.layers, timings_s={k: round(v, 2) for k, v in result.timings.items()})
    with Meter(device) as m:
        scores = api.evaluate_edits(model, tok, records)
    out["evaluate"] = m.row(n_records=len(records), records_per_s=round(len(records) / m.seconds, 3),
                            summary={k: scores["summary"][k] for k in ("efficacy", "paraphrase", "neighborhood")})
    cfg = {"type": "lora", "layers": "all", "modules": "attn,mlp", "data": args.ft_data, "max_steps": args.lora_steps,
           "batch_size": args.batch_size, "max_length": args.max_length, "warmup_steps": 0, "eval_every": 0}
    if args.tiny:
        cfg["max_examples"] = 32
    with Meter(device) as m:
        manifest = finetune(model, cfg, work / f"{name}-lora", tokenizer=tok, progress=args.progress,
                            adapter_only=True)
    out["lora"] = m.row(steps=manifest["steps"], tokens=manifest["tokens"],
                        tokens_per_s=round(manifest["timings"]["tokens_per_s"], 1),
                        train_seconds=round(manifest["timings"]["train_seconds"], 2),
                        n_trained=manifest["n_trained"])
    return out


def run(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random models and budgets (CPU, seconds)")
    p.add_argument("--device", help="default: cuda when present, else cpu")
    p.add_argument("--dtype", default="bfloat16", help="weights' dtype (default bfloat16)")
    p.add_argument("--threads", type=int)
    p.add_argument("--models", default="smollm2,llama2-7b-shape", help="comma-separated: smollm2, llama2-7b-shape")
    p.add_argument("--n-edits", type=int)
    p.add_argument("--lora-steps", type=int)
    p.add_argument("--mom2-n-tokens", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--ft-data", default="commonsense")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.n_edits = args.n_edits or (4 if args.tiny else 100)
    args.lora_steps = args.lora_steps or (3 if args.tiny else 100)
    args.mom2_n_tokens = args.mom2_n_tokens or (800 if args.tiny else 20000)
    if args.tiny:
        args.max_length = min(args.max_length, 64)

    import torch

    from editdecay.errors import ConfigError
    from editdecay.models.device import configure_threads, resolve_device, resolve_dtype

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    threads = configure_threads(args.threads)
    report: dict[str, Any] = {
        "command": "python benchmarks/device_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tiny": args.tiny, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "threads": threads,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "budgets": {"n_edits": args.n_edits, "lora_steps": args.lora_steps, "mom2_n_tokens": args.mom2_n_tokens,
                    "batch_size": args.batch_size, "max_length": args.max_length},
        "models": {},
    }
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - {"smollm2", "llama2-7b-shape"}
    if unknown:
        raise ConfigError(f"--models: unknown {sorted(unknown)}; use smollm2, llama2-7b-shape")
    tok = None
    if args.tiny:
        from editdecay.data.corpora import tokenizer_text
        from editdecay.models.tiny import tiny_tokenizer

        tok = tiny_tokenizer(tokenizer_text())
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            if name == "smollm2" and not args.tiny:
                from editdecay.models.registry import load_model

                model, tok_m = load_model("smollm2-135m", device=device, dtype=dtype)
            else:
                if tok is None:  # the 7B shape borrows SmolLM2's tokenizer
                    from editdecay.models.registry import load_model

                    tok = load_model("smollm2-135m", device="cpu")[1]
                tok_m = tok
                config = _llama7b_config(len(tok_m), tiny=args.tiny or name == "smollm2")
                model = random_model(config, tok_m, device, dtype)
            built = time.perf_counter() - t0
            print(f"[device_check] {name}: built in {built:.1f}s", file=sys.stderr, flush=True)
            row = check_model(name, model, tok_m, args, device, Path(tmp))
            row["build_seconds"] = round(built, 2)
            report["models"][name] = row
            print(f"[device_check] {name}: {json.dumps({k: row[k] for k in ('edit', 'lora')})}", file=sys.stderr)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    report = run(argv)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
