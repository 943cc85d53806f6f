"""Tiny edit requests and settings fast enough for random tiny models (the editing tests share them)."""

from __future__ import annotations

import json

import torch

from editdecay.data.records import EditRecord
from editdecay.models.arch import get_adapter

FACTS = [
    ("Paris", "{} is located in", "Germany"),
    ("The Eiffel Tower", "In {}, the official language is", "Rome"),
    ("Danielle Darrieux", "The mother tongue of {} is", "English"),
]
RECORDS = [EditRecord(case_id=str(i), subject=s, prompt=p, target_new=t, dataset="user")
           for i, (s, p, t) in enumerate(FACTS)]
TEMPLATES = [["{}"], ["The cat sat on the mat. {}", "Because of this. {}"]]
FAST = dict(layers=[1, 2], mom2_n_tokens=800, mom2_seq_len=64, v_num_grad_steps=5, v_weight_decay=0.05,
            context_template_length_params=[[6, 2]])


def sharpen(model):
    """Random heads give near-uniform outputs; a larger head makes the target NLL respond to δ."""
    with torch.no_grad():
        model.get_submodule(get_adapter(model).unembed).weight.mul_(10)
    return model


def tiny_edit_folder(model, tok, folder, layers):
    """An edit folder (a model saved as is, manifest with two CounterFact-style records) for fine-tuning tests."""
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    records = [EditRecord(case_id=str(i), subject=s, prompt="{} is located in", target_new=t, target_true="Paris",
                          paraphrase_prompts=[f"Where is {s}? It is in"], neighborhood_prompts=["The Louvre is in"],
                          neighborhood_answers=["Paris"], dataset="counterfact")
               for i, (s, t) in enumerate((("The Eiffel Tower", "Rome"), ("Notre Dame", "Berlin")))]
    manifest = {"stage": "edit", "method": "none", "layers": layers, "records": [r.to_dict() for r in records]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return records
