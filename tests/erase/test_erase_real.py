"""Erase on the real SmolLM2-135M: a 2-edit MEMIT and AlphaEdit are located exactly from ΔW (layers 4-8, rank 2,
only down_proj), the exact restore is bit-identical, and the weights-only statistic and object tracing are scored
against that edit (their numbers are measured here, not assumed; docs/erase.md has the 1/10/100-edit figures)."""

from __future__ import annotations

import copy

import pytest
import torch

from editdecay.data.records import load_edit_records
from editdecay.edit.api import edit
from editdecay.edit.stats import StatsCache
from editdecay.erase import locate, reverse, trace
from editdecay.erase.api import inspect_edits
from editdecay.models.arch import get_adapter

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_thread")]

SMALL = {"mom2_n_tokens": 6000}


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_real_edit_located_exactly_and_restored_bit_for_bit(smollm2, tmp_path, method):
    base, tok = smollm2
    records = load_edit_records("counterfact", n=2)
    model = copy.deepcopy(base)
    result = edit(model, tok, records, method=method, hparams=SMALL, stats_cache=StatsCache(tmp_path),
                  progress=False)
    report = inspect_edits((model, tok), (base, tok), trace_k=2)
    assert report["located_layers"] == result.layers == [4, 5, 6, 7, 8]
    assert {c["projection"] for c in report["changes"]} == {"mlp.down_proj.weight"}
    assert all(c["rank"] == 2 for c in report["changes"])
    # weights-only: measured against the layers this edit changed (a score per layer, no claim of success)
    adapter = get_adapter(model)
    scores = locate.weights_only_scores(model, adapter)
    assert len(scores["layers"]) == 30 and all(isinstance(i, int) for i in scores["located_layers"])
    # tracing from ΔW: the last edited layer's two directions, read through the remaining layers
    traced = [d for d in report["traced"] if d["layer"] == 8]
    acc = trace.tracing_accuracy([trace.TracedDirection(**d) for d in traced], [r.target_new for r in records],
                                 tok, top=5)
    assert acc["n_targets"] == 2 and acc["n_directions"] == 2
    changes = locate.diff_changes(model, base, adapter)
    reverse.restore_exact(model, base, changes)
    theirs = dict(base.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in model.named_parameters())
