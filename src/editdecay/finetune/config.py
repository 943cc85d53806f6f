"""Fine-tuning settings: one dataclass with the study's defaults, validated so a typo fails before training.

Defaults follow the study (LLM-Adapters' commonsense setup): LoRA/DoRA rank 32, alpha 64, dropout 0.05,
learning rate 2e-4; full fine-tuning at 5e-6; AdamW with warmup and a linear or cosine decay, gradient
clipping and accumulation. ``lr=None`` means "the default for this type", so switching ``type`` does not
silently keep a learning rate meant for the other kind of training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from editdecay.errors import ConfigError
from editdecay.util.io import stable_hash
from editdecay.util.layers import parse_layer_list

FT_TYPES = ("full", "lora", "dora")
SCHEDULES = ("linear", "cosine", "constant")
LAYER_WORDS = ("all", "edited", "non-edited")
EXTRA_TRAINABLE = ("embed", "unembed", "norms")
DEFAULT_LR = {"full": 5e-6, "lora": 2e-4, "dora": 2e-4}

# keys that change what is trained; progress/bookkeeping keys (eval_every, checkpoint_every) do not enter
# the run hash, so a user may resume a run with a different evaluation cadence
_BOOKKEEPING = ("checkpoint_every", "log_every")
_PRESERVE_KEYS = ("preserve_strategy", "replay_rate", "replay_paraphrases", "nullspace_keys", "reedit_z",
                  "reedit_reoptimise")


@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tuning run. Build with :meth:`from_dict` to get key and value checks."""

    type: str = "lora"
    layers: str | list[int] = "all"  # "all" | "edited" | "non-edited" | list of layer indices
    modules: str = "attn,mlp"  # "attn", "mlp", both, or named projections ("q_proj,v_proj")
    data: str = "commonsense"  # a name load_finetune_corpus knows, or a file
    max_examples: int | None = None  # use only the first N examples of the corpus (before shuffling)
    # loss on the whole templated example (LLM-Adapters' and the study's train_on_inputs=True) or only on
    # the response (False; the instruction-tuning convention)
    train_on_inputs: bool = True
    # keeping an edit through fine-tuning (editdecay.preserve; docs/preserve.md): none | freeze | nullspace |
    # replay | reedit, applied to the edit folder given as preserve_edits / --preserve-edits
    preserve_strategy: str = "none"
    replay_rate: float = 0.1  # replay: share of the training examples that are edit facts
    replay_paraphrases: bool = True  # replay: also the records' paraphrase prompts (PS is then not held out)
    nullspace_keys: str = "mean"  # nullspace: the edit's template-averaged keys, or "prompts" (every template)
    reedit_z: str = "base"  # reedit: z as the edit optimised it ("base"), or as the edited model reaches it
    reedit_reoptimise: bool = True  # reedit: re-optimise z for edits that held before but fail after the re-solve
    # adapters
    r: int = 32
    alpha: float = 64.0
    dropout: float = 0.05
    # optimisation
    lr: float | None = None  # None -> DEFAULT_LR[type]
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int | None = None  # wins over warmup_ratio when set
    warmup_ratio: float = 0.03
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    batch_size: int = 4
    max_length: int = 256
    max_steps: int | None = None  # wins over epochs when set
    epochs: float = 1.0
    seed: int = 0
    train_extra: list[str] = field(default_factory=list)  # full only: also train "embed", "unembed", "norms"
    # tracking and bookkeeping
    eval_every: int = 0  # 0: evaluate tracked edits only at step 0 and at the end
    downstream_tasks: list[str] = field(default_factory=list)  # optional downstream sample while tracking
    downstream_n: int = 20  # items per downstream task at each evaluation
    checkpoint_every: int = 50
    log_every: int = 1

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> FinetuneConfig:
        """Build and validate; unknown keys raise ConfigError naming them and listing the known ones."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown fine-tuning setting(s) {unknown}; known: {', '.join(sorted(known))}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> FinetuneConfig:
        merged = self.to_dict()
        merged.update(changes)
        return FinetuneConfig.from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.type]

    def run_hash(self) -> str:
        """Hash of the settings that decide the trained weights (bookkeeping cadence excluded)."""
        return stable_hash({k: v for k, v in self.to_dict().items()
                            if k not in _BOOKKEEPING and k not in self._unused_preserve_keys()})

    def _unused_preserve_keys(self) -> set[str]:
        """Preserve settings the chosen strategy ignores: left out of the run hash, so adding them changed no
        existing run's hash and tuning one strategy's knob never re-runs another strategy."""
        used = {"none": (), "freeze": ("preserve_strategy",), "nullspace": ("preserve_strategy", "nullspace_keys"),
                "replay": ("preserve_strategy", "replay_rate", "replay_paraphrases"),
                "reedit": ("preserve_strategy", "reedit_z", "reedit_reoptimise")}.get(self.preserve_strategy, ())
        return set(_PRESERVE_KEYS) - set(used)

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"fine-tuning setting '{key}' = {getattr(self, key)!r}: {why}")

        if self.type not in FT_TYPES:
            raise bad("type", f"must be one of {', '.join(FT_TYPES)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        self.layers = parse_layer_setting(self.layers)
        if not isinstance(self.modules, str) or not self.modules.strip():
            raise bad("modules", "must be a non-empty comma-separated string such as 'attn,mlp'")
        if not isinstance(self.data, str) or not self.data:
            raise bad("data", "must name a corpus or a file")
        for key in ("r", "batch_size", "grad_accum", "max_length", "checkpoint_every", "log_every", "downstream_n"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "must be a positive integer")
        for key in ("max_steps", "max_examples", "warmup_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise bad(key, "must be a non-negative integer or null")
        if self.max_steps == 0:
            raise bad("max_steps", "must be at least 1")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise bad("eval_every", "must be a non-negative integer (0: only at start and end)")
        if not isinstance(self.train_on_inputs, bool):
            raise bad("train_on_inputs", "must be true (loss on the whole example, the study's setting) or false "
                      "(loss on the response only)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "must be an integer")
        self._validate_preserve(bad)
        for key in ("alpha", "weight_decay", "adam_eps", "warmup_ratio", "epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad(key, "must be a non-negative number")
        if self.epochs <= 0 and self.max_steps is None:
            raise bad("epochs", "must be positive when max_steps is not set")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1)")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise bad(key, "must be in [0, 1)")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or self.lr <= 0):
            raise bad("lr", "must be a positive number (or null for the type's default)")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise bad("max_grad_norm", "must be positive, or null for no clipping")
        if not isinstance(self.train_extra, list) or any(x not in EXTRA_TRAINABLE for x in self.train_extra):
            raise bad("train_extra", f"must be a list drawn from {', '.join(EXTRA_TRAINABLE)}")
        if self.train_extra and self.type != "full":
            raise bad("train_extra", "only applies to full fine-tuning (adapters go on projections)")
        if not isinstance(self.downstream_tasks, list) or any(not isinstance(t, str) for t in self.downstream_tasks):
            raise bad("downstream_tasks", "must be a list of task names")

    def _validate_preserve(self, bad: Any) -> None:
        from editdecay.preserve import NULLSPACE_KEYS, REEDIT_Z, STRATEGIES

        if self.preserve_strategy not in STRATEGIES:
            raise bad("preserve_strategy", f"must be one of {', '.join(STRATEGIES)}")
        rate = self.replay_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise bad("replay_rate", "must be a share of the examples in (0, 1), e.g. 0.1")
        for key in ("replay_paraphrases", "reedit_reoptimise"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        if self.nullspace_keys not in NULLSPACE_KEYS:
            raise bad("nullspace_keys", f"must be one of {', '.join(NULLSPACE_KEYS)}")
        if self.reedit_z not in REEDIT_Z:
            raise bad("reedit_z", f"must be one of {', '.join(REEDIT_Z)}")


def parse_layer_setting(spec: Any) -> str | list[int]:
    """'all' | 'edited' | 'non-edited' | '4,5,6' | '4-6' | [4, 5, 6] -> a word or a sorted list of ints."""
    if isinstance(spec, str):
        text = spec.strip().lower().replace("non_edited", "non-edited")
        if text in LAYER_WORDS:
            return text
        spec = parse_layer_list(text, what=f"fine-tuning setting 'layers' = {spec!r}")
    if isinstance(spec, (list, tuple)):
        if not spec or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in spec):
            raise ConfigError(f"fine-tuning setting 'layers' = {spec!r}: expected a non-empty list of layer indices >= 0")
        return sorted(set(spec))
    raise ConfigError(f"fine-tuning setting 'layers' = {spec!r}: use all, edited, non-edited or a list of indices")
