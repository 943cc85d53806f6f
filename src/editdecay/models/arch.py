"""One table of per-architecture facts, so no other code ever looks at a model's name.

Every editing, fine-tuning and analysis step asks an :class:`ArchAdapter` where things live: the decoder
layers, the MLP output projection that MEMIT/AlphaEdit rewrite (and whether its weight is stored
transposed, as GPT-2's ``Conv1D`` is), the projections fine-tuning targets, the final norm and the
unembedding. Adding an architecture is adding one row to ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editdecay.errors import ModelError


@dataclass(frozen=True)
class ArchAdapter:
    """Where the parts of one architecture live, as dotted attribute paths."""

    name: str
    layers: str  # path from the model root to the ModuleList of decoder layers
    rewrite: str  # path inside a layer to the MLP output projection that editing rewrites
    rewrite_transposed: bool  # True when the weight is stored [in, out] (Conv1D) instead of [out, in]
    attn_projections: tuple[str, ...]  # paths inside a layer, fine-tuned when "attn" is selected
    mlp_projections: tuple[str, ...]  # paths inside a layer, fine-tuned when "mlp" is selected
    final_norm: str
    unembed: str
    embed: str
    mlp_output_norm: str | None = None  # a norm applied to the MLP output before the residual add (Gemma)

    # --- navigation -------------------------------------------------------------------------------
    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layer_modules(model))

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        layers = self.layer_modules(model)
        if not 0 <= index < len(layers):
            raise ModelError(f"layer {index} is out of range: {self.name} model has layers 0..{len(layers) - 1}")
        return layers[index]

    def rewrite_module(self, model: nn.Module, index: int) -> nn.Module:
        return _get(self.layer(model, index), self.rewrite)

    def rewrite_name(self, index: int) -> str:
        """Full parameter-path prefix of the rewritten projection in layer ``index``."""
        return f"{self.layers}.{index}.{self.rewrite}"

    def rewrite_weight(self, model: nn.Module, index: int) -> torch.Tensor:
        """The rewritten weight as stored (use :meth:`as_out_in` for the [out, in] view)."""
        return self.rewrite_module(model, index).weight

    def as_out_in(self, weight_or_delta: torch.Tensor) -> torch.Tensor:
        """View a stored weight (or a delta shaped like it) as [out, in], the orientation of the formulas."""
        return weight_or_delta.T if self.rewrite_transposed else weight_or_delta

    def to_stored(self, delta_out_in: torch.Tensor) -> torch.Tensor:
        """Turn an [out, in] delta into the stored orientation of the rewritten weight."""
        return delta_out_in.T if self.rewrite_transposed else delta_out_in

    def projection_names(self, modules: str | tuple[str, ...] | list[str] = ("attn", "mlp")) -> list[str]:
        """Projection paths inside a layer for a module selection: 'attn', 'mlp', or explicit projection names."""
        if isinstance(modules, str):
            modules = [m.strip() for m in modules.split(",") if m.strip()]
        out: list[str] = []
        known = {p.rsplit(".", 1)[-1]: p for p in self.attn_projections + self.mlp_projections}
        for item in modules:
            if item == "attn":
                out.extend(self.attn_projections)
            elif item == "mlp":
                out.extend(self.mlp_projections)
            elif item in known:
                out.append(known[item])
            elif item in known.values():
                out.append(item)
            else:
                raise ModelError(
                    f"unknown module selection '{item}' for {self.name}: use 'attn', 'mlp' or one of "
                    f"{sorted(known)}"
                )
        return list(dict.fromkeys(out))

    def check(self, model: nn.Module) -> None:
        """Fail early, with the path, if this row does not match the model's real modules."""
        for path in (self.layers, self.final_norm, self.unembed, self.embed):
            _get(model, path)
        first = self.layer(model, 0)
        for path in (self.rewrite, *self.attn_projections, *self.mlp_projections):
            _get(first, path)


def _get(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module path '{path}' not found on {type(root).__name__} (missing '{part}')")
        obj = getattr(obj, part)
    return obj


_LLAMA_LIKE = dict(
    layers="model.layers",
    rewrite="mlp.down_proj",
    rewrite_transposed=False,
    attn_projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp_projections=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    final_norm="model.norm",
    unembed="lm_head",
    embed="model.embed_tokens",
)

ADAPTERS: dict[str, ArchAdapter] = {
    "llama": ArchAdapter(name="llama", **_LLAMA_LIKE),
    "mistral": ArchAdapter(name="mistral", **_LLAMA_LIKE),
    "qwen2": ArchAdapter(name="qwen2", **_LLAMA_LIKE),
    "qwen3": ArchAdapter(name="qwen3", **_LLAMA_LIKE),
    "gemma3_text": ArchAdapter(name="gemma3_text", mlp_output_norm="post_feedforward_layernorm", **_LLAMA_LIKE),
    "gpt2": ArchAdapter(
        name="gpt2",
        layers="transformer.h",
        rewrite="mlp.c_proj",
        rewrite_transposed=True,
        attn_projections=("attn.c_attn", "attn.c_proj"),
        mlp_projections=("mlp.c_fc", "mlp.c_proj"),
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
    ),
    "gptj": ArchAdapter(
        name="gptj",
        layers="transformer.h",
        rewrite="mlp.fc_out",
        rewrite_transposed=False,
        attn_projections=("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"),
        mlp_projections=("mlp.fc_in", "mlp.fc_out"),
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
    ),
    "gpt_neox": ArchAdapter(
        name="gpt_neox",
        layers="gpt_neox.layers",
        rewrite="mlp.dense_4h_to_h",
        rewrite_transposed=False,
        attn_projections=("attention.query_key_value", "attention.dense"),
        mlp_projections=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        embed="gpt_neox.embed_in",
    ),
}


def supported_architectures() -> list[str]:
    return sorted(ADAPTERS)


def get_adapter(model_or_type: nn.Module | str) -> ArchAdapter:
    """The adapter for a model (by its ``config.model_type``) or a model-type string."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type is None:
            raise ModelError(f"{type(model_or_type).__name__} has no config.model_type; cannot pick an adapter")
    if model_type == "gemma3":  # the multimodal wrapper's text model has the same layout
        model_type = "gemma3_text"
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported architecture '{model_type}'. Supported: {', '.join(supported_architectures())}. "
            "To add one, add a row to ADAPTERS in editdecay/models/arch.py naming its decoder layers, the MLP "
            "output projection, attention/MLP projections, final norm, embedding and unembedding."
        ) from None
