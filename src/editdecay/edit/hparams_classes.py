"""The hyperparameter dataclasses of the editing methods, one per method, with their validation.

Kept apart from :mod:`editdecay.edit.hparams` (the per-model defaults table and the loader: defaults, then a
file, then overrides) because the method registry (:mod:`editdecay.edit.registry`) names each method's class
and the loader reads the registry: classes -> registry -> loader, no circle. Field names follow the
MEMIT/AlphaEdit reference code (see :mod:`editdecay.edit.hparams` for how its files map). Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from editdecay.errors import ConfigError

# fields added after stage ids and manifests were first written: left out of to_dict() at their defaults, so
# the ids of existing settings stay the same
_ADDED_FIELDS = {"mom2_n_samples": None, "mom2_allow_short": False}


@dataclass
class EditHparams:
    """MEMIT hyperparameters (shared by every method built on the core)."""

    method: ClassVar[str] = "memit"

    layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    layer_selection: str = "all"
    fact_token: str = "subject_last"
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    # target values z
    v_lr: float = 0.5
    v_num_grad_steps: int = 25
    v_loss_layer: int | None = None
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    v_early_stop_loss: float = 5e-2
    # second moments
    mom2_dataset: list[str] = field(default_factory=lambda: ["wikitext", "wikipedia"])
    mom2_n_tokens: int = 100_000
    mom2_n_samples: int | None = None  # set: count documents instead of tokens (the reference files' budget)
    mom2_allow_short: bool = False  # a corpus smaller than the budget: use it (recorded) instead of failing
    mom2_dtype: str = "float64"
    mom2_seq_len: int = 256
    mom2_update_weight: float = 15000.0
    # engineering knobs (no effect on the result beyond float rounding)
    z_batch_size: int = 16
    z_prefix_cache: bool = True
    max_condition: float = 1e12

    # ------------------------------------------------------------------------------------------------
    def validate(self, num_layers: int | None = None) -> None:
        """Raise :class:`ConfigError` naming the key for any value the methods cannot use."""
        if not self.layers:
            raise ConfigError("hparams.layers: at least one layer is needed")
        if any(not isinstance(x, int) or isinstance(x, bool) for x in self.layers):
            raise ConfigError(f"hparams.layers: expected integers, got {self.layers!r}")
        if sorted(set(self.layers)) != list(self.layers):
            raise ConfigError(f"hparams.layers: must be strictly increasing, got {self.layers!r}")
        if self.layers[0] < 0:
            raise ConfigError(f"hparams.layers: negative layer in {self.layers!r}")
        if num_layers is not None and self.layers[-1] >= num_layers:
            raise ConfigError(f"hparams.layers: layer {self.layers[-1]} out of range, the model has layers "
                              f"0..{num_layers - 1}")
        if self.layer_selection != "all":
            raise ConfigError(f"hparams.layer_selection: only 'all' is supported, got {self.layer_selection!r}")
        if self.fact_token != "subject_last":
            raise ConfigError(f"hparams.fact_token: only 'subject_last' is supported, got {self.fact_token!r}")
        ctp = self.context_template_length_params
        if not isinstance(ctp, list) or any(
            not isinstance(p, (list, tuple)) or len(p) != 2 or any(not isinstance(v, int) or v < 0 for v in p)
            for p in ctp
        ):
            raise ConfigError("hparams.context_template_length_params: expected [[max_tokens, count], ...] "
                              f"with non-negative integers, got {ctp!r}")
        if num_layers is not None and self.v_loss_layer not in (None, num_layers - 1):
            raise ConfigError(f"hparams.v_loss_layer: only the last layer ({num_layers - 1}) is supported "
                              f"(use null), got {self.v_loss_layer}")
        positive = {"v_lr": self.v_lr, "clamp_norm_factor": self.clamp_norm_factor,
                    "mom2_n_tokens": self.mom2_n_tokens, "mom2_seq_len": self.mom2_seq_len,
                    "z_batch_size": self.z_batch_size, "max_condition": self.max_condition}
        for key, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"hparams.{key}: must be a positive number, got {value!r}")
        non_negative = {"v_num_grad_steps": self.v_num_grad_steps, "v_weight_decay": self.v_weight_decay,
                        "kl_factor": self.kl_factor, "v_early_stop_loss": self.v_early_stop_loss,
                        "mom2_update_weight": self.mom2_update_weight}
        for key, value in non_negative.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"hparams.{key}: must be a non-negative number, got {value!r}")
        n_samples = self.mom2_n_samples
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
            raise ConfigError(f"hparams.mom2_n_samples: must be a positive integer or null, got {n_samples!r}")
        if not isinstance(self.mom2_allow_short, bool):
            raise ConfigError(f"hparams.mom2_allow_short: expected true or false, got {self.mom2_allow_short!r}")
        if not isinstance(self.v_num_grad_steps, int):
            raise ConfigError(f"hparams.v_num_grad_steps: expected an integer, got {self.v_num_grad_steps!r}")
        if self.mom2_dtype not in ("float64", "float32"):
            raise ConfigError(f"hparams.mom2_dtype: 'float64' or 'float32', got {self.mom2_dtype!r}")
        if isinstance(self.mom2_dataset, str):
            self.mom2_dataset = [self.mom2_dataset]
        if not self.mom2_dataset or any(not isinstance(x, str) for x in self.mom2_dataset):
            raise ConfigError(f"hparams.mom2_dataset: expected corpus names or paths, got {self.mom2_dataset!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, default in _ADDED_FIELDS.items():
            if out.get(key) == default:
                del out[key]
        out["method"] = self.method
        return out


@dataclass
class AlphaEditHparams(EditHparams):
    """AlphaEdit: MEMIT's keys and targets, plus the null-space projection threshold and the L2 weight α."""

    method: ClassVar[str] = "alphaedit"

    nullspace_threshold: float = 2e-2
    L2: float = 10.0

    def validate(self, num_layers: int | None = None) -> None:
        super().validate(num_layers)
        if not isinstance(self.nullspace_threshold, (int, float)) or not self.nullspace_threshold > 0:
            raise ConfigError(f"hparams.nullspace_threshold: must be positive, got {self.nullspace_threshold!r}")
        if not isinstance(self.L2, (int, float)) or self.L2 < 0:
            raise ConfigError(f"hparams.L2: must be non-negative, got {self.L2!r}")


__all__ = ["EditHparams", "AlphaEditHparams"]
