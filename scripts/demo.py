"""The README's main job on the embedded default model (grows with the pipeline)."""

from __future__ import annotations

import sys

import torch

from editdecay.data.records import load_edit_records
from editdecay.models.registry import DEFAULT_MODEL, load_model


def main() -> int:
    model, tok = load_model(DEFAULT_MODEL)
    records = load_edit_records("counterfact", n=5)
    for record in records:
        ids = tok(record.filled_prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
        print(f"{record.filled_prompt!r} -> {answer!r} (true: {record.target_true!r}, edit target: {record.target_new!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
