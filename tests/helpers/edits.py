"""Tiny edit requests and settings fast enough for random tiny models (the editing tests share them)."""

from __future__ import annotations

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
