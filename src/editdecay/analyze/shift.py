"""Activation-shift analysis: does fine-tuning move the hidden states at the edited layers back, or elsewhere?

On each edit prompt, at the last token of the subject (where MEMIT/AlphaEdit write their keys: found with the
editor's own locator, ``edit.prompts.Encoder.encode_with_subject``), and at the output of each analysed
decoder layer:

    a = h_ed − h_base        (the shift the edit caused)
    b = h_ed_ft − h_ed       (the shift fine-tuning caused afterwards)

reported as ‖a‖, ‖b‖, their ratio and the angle between a and b (180° = fine-tuning pushes the state straight
back towards the unedited model, 90° = an unrelated direction, undefined when either shift is exactly zero).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from editdecay.errors import ConfigError, DataError, ModelError


def subject_positions(tokenizer: Any, records: list[Any]) -> list[tuple[list[int], int]]:
    """(token ids, index of the subject's last token) of each record's bare prompt, found by the editor's own
    locator (``edit.prompts``: the rows of the bare "{}" template that the keys are read from), so the shift is
    read at the token the edit wrote its keys."""
    from editdecay.edit.prompts import Encoder, Request, SubjectPrompts

    for rec in records:
        if "{}" not in rec.prompt:
            raise DataError("edit manifest", f"prompt {rec.prompt!r} has no '{{}}' for the subject", field="prompt")
    requests = [Request(str(r.case_id), r.subject, r.prompt, r.target_new) for r in records]
    rows = SubjectPrompts.build(Encoder(tokenizer), requests, [["{}"]])
    return [(list(ids), int(pos)) for ids, pos in zip(rows.ids, rows.lookup, strict=True)]


def hidden_at(model: Any, tokenizer: Any, prompts: list[tuple[list[int], int]], layers: list[int],
              batch_size: int = 16, desc: str = "") -> dict[int, np.ndarray]:
    """Decoder-layer outputs at the given token positions: layer -> [n_prompts, d_model] (float64)."""
    import torch
    from tqdm.auto import tqdm

    from editdecay.data.tokens import pad_token_id
    from editdecay.models.arch import get_adapter

    adapter = get_adapter(model)
    modules = {i: adapter.layer(model, i) for i in layers}
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(_module, _inputs, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
        return fn

    handles = [modules[i].register_forward_hook(hook(i)) for i in layers]
    out: dict[int, list[np.ndarray]] = {i: [] for i in layers}
    pad = pad_token_id(tokenizer)
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=None, leave=False):
                batch = prompts[start:start + batch_size]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (ids, _) in enumerate(batch):  # right padding: positions stay as tokenised
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device))
                rows = torch.arange(len(batch))
                pos = torch.tensor([p for _, p in batch])
                for i in layers:
                    out[i].append(captured[i][rows, pos].double().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
    return {i: np.concatenate(out[i], axis=0) for i in layers}


def shift_stats(h_base: np.ndarray, h_ed: np.ndarray, h_ft: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: ‖a‖, ‖b‖, cos(a, b) and the angle in degrees (nan where a or b is exactly zero)."""
    a, b = h_ed - h_base, h_ft - h_ed
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    defined = (na > 0) & (nb > 0)
    cos = np.full(na.shape, np.nan)
    cos[defined] = np.sum(a[defined] * b[defined], axis=1) / (na[defined] * nb[defined])
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return {"edit_shift": na, "ft_shift": nb, "cos": cos, "angle_deg": angle,
            "base_norm": np.linalg.norm(h_base, axis=1)}


def _mean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def activation_shift(base: str | os.PathLike, edited: str | os.PathLike, finetuned: str | os.PathLike,
                     layers: list[int] | None = None, n: int | None = None, batch_size: int = 16, *,
                     device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """Compare hidden-state shifts from editing and from fine-tuning at the edited layers (see module doc).

    ``edited`` is an edit folder: its manifest.json gives the records (and, by default, the layers).
    ``device``/``dtype``: where and in what precision the three models are loaded (see models/device.py).
    """
    from editdecay.artifacts import MANIFEST, edited_layers, read_edit_manifest
    from editdecay.data.records import records_from_manifest
    from editdecay.models.registry import load_model

    manifest = read_edit_manifest(edited)
    source = Path(edited) / MANIFEST
    if not manifest.get("records"):
        raise DataError(str(source), "has no 'records' list", field="records")
    records = records_from_manifest(manifest, source)
    if n is not None:
        records = records[:n]
    if layers is None:
        layers = edited_layers(manifest)
        if not layers:
            raise ConfigError(f"{edited}/manifest.json lists no edited 'layers': pass --layers")
    m_ed, tok = load_model(edited, device=device, dtype=dtype)
    models = {"edited": m_ed}
    for name, source in (("base", base), ("finetuned", finetuned)):
        model, other_tok = load_model(source, device=device, dtype=dtype)
        if other_tok.get_vocab() != tok.get_vocab():
            raise ModelError(f"--{name} {source}: its tokenizer differs from the edited model's; the three models must "
                             "share one tokenizer")
        models[name] = model
    result = shift_between(models["base"], models["edited"], models["finetuned"], tok, records, layers, batch_size)
    result.update({"base": str(base), "edited": str(edited), "finetuned": str(finetuned)})
    return result


def shift_between(base: Any, edited: Any, finetuned: Any, tokenizer: Any, records: list[Any], layers: list[int],
                  batch_size: int = 16) -> dict[str, Any]:
    """The analysis on loaded models (same tokenizer) and EditRecords; what :func:`activation_shift` calls."""
    prompts = subject_positions(tokenizer, records)
    hidden = {name: hidden_at(model, tokenizer, prompts, layers, batch_size, desc=f"{name} forward")
              for name, model in (("base", base), ("edited", edited), ("finetuned", finetuned))}
    per_layer, per_record = [], []
    for layer in layers:
        s = shift_stats(hidden["base"][layer], hidden["edited"][layer], hidden["finetuned"][layer])
        mean_edit, mean_ft = _mean(s["edit_shift"]), _mean(s["ft_shift"])
        per_layer.append({
            "layer": layer, "edit_shift": mean_edit, "ft_shift": mean_ft,
            "ratio": (mean_ft / mean_edit) if mean_edit else None,
            "edit_shift_rel": _mean(s["edit_shift"] / s["base_norm"]),
            "ft_shift_rel": _mean(s["ft_shift"] / s["base_norm"]),
            "cos": _mean(s["cos"]), "angle_deg": _mean(s["angle_deg"]),
            "n_angle_defined": int(np.sum(~np.isnan(s["cos"]))),
        })
        for k, rec in enumerate(records):
            per_record.append({"case_id": rec.case_id, "layer": layer,
                               **{key: (None if math.isnan(float(s[key][k])) else float(s[key][k]))
                                  for key in ("edit_shift", "ft_shift", "cos", "angle_deg", "base_norm")}})
    return {"analysis": "activation_shift", "layers": list(layers), "n_records": len(records),
            "position": "subject last token", "per_layer": per_layer, "records": per_record}


def format_shift(result: dict[str, Any]) -> str:
    """A terminal table of the per-layer means."""
    def f(x: float | None, spec: str) -> str:
        return "–" if x is None else format(x, spec)

    lines = [f"activation shift at the subject's last token, {result['n_records']} edit prompts",
             f"{'layer':>5}  {'|h_ed-h_base|':>13}  {'|h_ft-h_ed|':>11}  {'ratio':>6}  {'angle°':>7}  {'cos':>6}"]
    for row in result["per_layer"]:
        lines.append(f"{row['layer']:>5}  {f(row['edit_shift'], '.4g'):>13}  {f(row['ft_shift'], '.4g'):>11}  "
                     f"{f(row['ratio'], '.3f'):>6}  {f(row['angle_deg'], '.1f'):>7}  {f(row['cos'], '.3f'):>6}")
    return "\n".join(lines)
