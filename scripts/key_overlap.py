"""How much of an edit's update lands on its neighbourhood prompts: a diagnostic of key specificity.

For one edit at layer L, MEMIT's update is ΔW = r k_eᵀ C⁻¹ / (k_eᵀ C⁻¹ k_e) in the small-λ limit, so a key k
elsewhere receives the fraction (k C⁻¹ k_e) / (k_e C⁻¹ k_e) of the edit's value change. This prints, over the
neighbourhood prompts of CounterFact records (other subjects, same relation, the true object), that fraction
at the prompt's last token and its largest magnitude over the prompt's positions (the neighbour's own subject
tokens). A model whose neighbours take a large share cannot write an edit without moving its neighbourhood.

    .venv/bin/python scripts/key_overlap.py --model smollm2-135m --layer 8
    .venv/bin/python scripts/key_overlap.py --model gemma3-270m --layer 6
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layer", type=int, required=True)
    ap.add_argument("--records", default="100:110", help="CounterFact record slice lo:hi (default: sweep records)")
    ap.add_argument("--prompts", type=int, default=5, help="neighbourhood prompts per record")
    ap.add_argument("--mom2-n-tokens", type=int, default=100_000)
    args = ap.parse_args()

    from editdecay.data.records import fill, load_edit_records
    from editdecay.edit.stats import StatsCache, second_moments
    from editdecay.models.arch import get_adapter
    from editdecay.models.registry import load_model

    torch.set_num_threads(1)
    model, tok = load_model(args.model)
    adapter = get_adapter(model)
    cov = second_moments(model, tok, adapter, [args.layer], n_tokens=args.mom2_n_tokens,
                         cache=StatsCache.default()).cov[args.layer]
    c_inv = torch.linalg.inv(cov + 1e-6 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype))
    keys: list[torch.Tensor] = []
    hook = adapter.rewrite_module(model, args.layer).register_forward_hook(
        lambda _m, a, _o: keys.append(a[0].detach()[0].double()))

    def keys_of(text: str) -> torch.Tensor:  # [positions, d_in]: the rewritten projection's input
        keys.clear()
        model(**tok(text, return_tensors="pt"))
        return keys[0]

    lo, hi = map(int, args.records.split(":"))
    last, peak = [], []
    with torch.no_grad():
        for rec in load_edit_records("counterfact", n=hi)[lo:hi]:
            k_e = keys_of(fill(rec.prompt.split("{}")[0] + "{}", rec.subject))[-1]  # the subject's last token
            scale = k_e @ c_inv @ k_e
            for prompt in rec.neighborhood_prompts[: args.prompts]:
                share = (keys_of(prompt) @ c_inv @ k_e) / scale
                last.append(float(share[-1]))
                peak.append(float(share.abs().max()))
    hook.remove()
    print(json.dumps({"model": args.model, "layer": args.layer, "records": args.records, "prompts": len(last),
                      "share_last_token_median": round(statistics.median(last), 4),
                      "share_max_over_positions_median": round(statistics.median(peak), 4)}))


if __name__ == "__main__":
    main()
