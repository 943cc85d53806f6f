"""The activation-shift analysis reads the token the editor wrote its keys at (edit.prompts' locator).

"The {}s are" with subject "Beatle": the tiny tokenizer merges the subject's last letter with the "s" after
it ("...l", "es"), so re-tokenising the prompt prefix (the old way: len(tok("The Beatle")) - 1) lands on "l",
one token before the one the editor's offset-based locator picks ("es", the last token overlapping the
subject). The analysis now uses the editor's locator: same ids and position as the edit's key rows, and the
edit shift at the edited layer equals ‖ΔW k‖ with k the editor's own key (compute_keys).
"""

from __future__ import annotations

import pytest
import torch

TEMPLATE, SUBJECT = "The {}s are", "Beatle"


def _retokenised(tok, template: str, subject: str) -> tuple[list[int], int]:
    """The old report/shift.py locator, kept here to show the case discriminates."""
    prefix = template[: template.index("{}")] + subject
    ids = tok(template.replace("{}", subject), add_special_tokens=True)["input_ids"]
    return list(ids), len(tok(prefix, add_special_tokens=True)["input_ids"]) - 1


@pytest.mark.parametrize("bos", [False, True])
def test_shift_position_is_the_editors_key_position(tiny_tok, tiny_tok_bos, bos):
    from helpers.reference import subject_last_token

    from editdecay.edit.prompts import Encoder, Request, SubjectPrompts

    tok = tiny_tok_bos if bos else tiny_tok
    rows = SubjectPrompts.build(Encoder(tok), [Request("a", SUBJECT, TEMPLATE, "x")], [["{}"]])
    ids, pos = subject_last_token(tok, TEMPLATE, SUBJECT)
    assert (ids, pos) == (rows.ids[0], rows.lookup[0])
    old_ids, old_pos = _retokenised(tok, TEMPLATE, SUBJECT)
    assert old_ids == ids and old_pos != pos  # the re-tokenised locator read a different token
    assert tok.decode(ids[pos:pos + 1]) == "es"


def test_edit_shift_is_delta_times_the_editors_key(tiny_tok):
    from editdecay.analyze.shift import shift_between
    from editdecay.data.records import EditRecord
    from editdecay.edit.keys import compute_keys
    from editdecay.edit.prompts import Request
    from editdecay.models.arch import get_adapter
    from editdecay.models.tiny import tiny_model

    base, tok = tiny_model("llama", tokenizer=tiny_tok, n_layers=4, d_model=64, seed=1)
    edited, _ = tiny_model("llama", tokenizer=tiny_tok, n_layers=4, d_model=64, seed=1)
    w = edited.model.layers[1].mlp.down_proj.weight
    delta = 0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        w.add_(delta)
    records = [EditRecord(case_id="a", subject=SUBJECT, prompt=TEMPLATE, target_new="x", target_true="y"),
               EditRecord(case_id="b", subject="Toko Yasuda", prompt="{} plays the", target_new="x", target_true="y")]
    keys = compute_keys(base, tok, get_adapter(base), 1, [Request.from_record(r) for r in records], [["{}"]])
    out = shift_between(base, edited, edited, tok, records, layers=[1])
    got = [r["edit_shift"] for r in out["records"]]
    expected = [float((k @ delta.T).norm()) for k in keys]
    assert got == pytest.approx(expected, rel=1e-4)
