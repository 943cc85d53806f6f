"""One fine-tuning run's preserve strategy: the hooks the fine-tuning stage calls, in the order it calls them.

``finetune`` builds a :class:`Preserve` from its config and the edit folder, then asks it, stage by stage:
which projections to leave out (freeze), which examples to train on (replay), what to gather before training
(keys, z), what to do after every optimizer step (null-space projection) and after training (re-edit), and
what to record in the fine-tune manifest. Every hook is a no-op for the strategies it does not concern, and
each strategy's extra work is timed into ``manifest["preserve"]["seconds"]``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editdecay.artifacts import REEDIT_DELTAS, write_deltas
from editdecay.errors import ConfigError
from editdecay.preserve import nullspace, reedit, replay
from editdecay.preserve.spec import EditSpec, load_edit_spec


class Preserve:
    """Built by :meth:`build` for a run whose ``preserve_strategy`` is not ``none``."""

    def __init__(self, strategy: str, spec: EditSpec, edit_dir: str, options: dict[str, Any]):
        self.strategy = strategy
        self.spec = spec
        self.edit_dir = edit_dir
        self.options = options
        self.seconds: dict[str, float] = {}
        self.info: dict[str, Any] = {}
        self.constraint: nullspace.NullspaceConstraint | None = None
        self.keys: dict[str, torch.Tensor] = {}
        self.start: dict[str, torch.Tensor] = {}
        self.plan: reedit.ReeditPlan | None = None
        self.reedit_deltas: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, cfg: Any, edit_dir: str | os.PathLike | None, model: nn.Module) -> Preserve | None:
        """``cfg``: a FinetuneConfig (read by attribute, so this package never imports finetune)."""
        strategy = cfg.preserve_strategy
        if strategy == "none":
            return None
        if edit_dir is None:
            raise ConfigError(f"preserve_strategy={strategy!r} needs the edit to preserve: pass --preserve-edits "
                              "EDIT_DIR (or a --model that is an edit folder)")
        spec = load_edit_spec(edit_dir, model)
        options = {"replay_rate": cfg.replay_rate, "replay_paraphrases": cfg.replay_paraphrases,
                   "nullspace_keys": cfg.nullspace_keys, "reedit_z": cfg.reedit_z,
                   "reedit_reoptimise": cfg.reedit_reoptimise}
        return cls(strategy, spec, str(edit_dir), options)

    def identity(self) -> dict[str, Any]:
        """What the run hash must see: the strategy and the edit it preserves."""
        return {"strategy": self.strategy, "edit": self.spec.fingerprint()}

    def _timed(self, key: str, started: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

    # -- before training ------------------------------------------------------------------------------
    def frozen_modules(self) -> list[str]:
        """Module names to leave out of the training selection (freeze)."""
        return self.spec.modules if self.strategy == "freeze" else []

    def examples(self, corpus: list) -> list:
        """The training examples: replay mixes the edit facts in; the other strategies leave them."""
        if self.strategy != "replay":
            return corpus
        pool = replay.replay_pool(self.spec.records, paraphrases=self.options["replay_paraphrases"])
        mixed = replay.mix(corpus, pool, self.options["replay_rate"])
        self.info.update(n_corpus=len(corpus), n_replay=len(mixed) - len(corpus), replay_pool=len(pool),
                         replay_share=(len(mixed) - len(corpus)) / len(mixed))
        return mixed

    def before_training(self, model: nn.Module, tok: Any, progress: bool = False) -> None:
        """Gather what the strategy needs from the model as fine-tuning starts (keys, z, starting weights)."""
        t = time.perf_counter()
        if self.strategy == "nullspace":
            self.keys = nullspace.edit_keys(model, tok, self.spec, self.options["nullspace_keys"])
            params = dict(model.named_parameters())
            self.start = {n: params[n].detach().float().cpu().clone() for n in self.spec.rewritten}
            self._timed("keys", t)
        elif self.strategy == "reedit":
            self.plan = reedit.prepare(model, tok, self.spec, self.options["reedit_z"], progress=progress)
            self._timed("reedit_prepare", t)

    def attach(self, train_module: nn.Module, ft_type: str) -> None:
        """Null space: bind the constraint to the weights (full) or adapter factors (LoRA/DoRA) that train."""
        if self.strategy != "nullspace":
            return
        t = time.perf_counter()
        self.constraint = nullspace.NullspaceConstraint.from_keys(self.keys)
        if ft_type == "full":
            self.constraint.attach_full(train_module)
        else:
            self.constraint.attach_peft(train_module)
        self._timed("projection", t)
        self.info.update(constrained=self.constraint.constrained, frozen=self.constraint.frozen,
                         key_rank=self.constraint.ranks())

    def after_update(self, resolve: Any = None) -> None:
        """Called by the training loop right after each optimizer step."""
        if self.constraint is not None:
            t = time.perf_counter()
            self.constraint.project(resolve)
            self._timed("projection", t)

    # -- after training -------------------------------------------------------------------------------
    @property
    def uses_final_model(self) -> bool:
        """Whether :meth:`after_training` works on the final weights (reedit writes, nullspace measures), so an
        adapter run must merge them in memory even when it saves only the adapter."""
        return self.strategy in ("reedit", "nullspace")

    @property
    def changes_final_model(self) -> bool:
        """Whether :meth:`after_training` changes the weights (reedit), so the tracker's last scores are not the
        saved model's."""
        return self.strategy == "reedit"

    def after_training(self, model: nn.Module, tok: Any, progress: bool = False) -> None:
        """On the final (merged) model: measure the null-space residual, or re-apply the edit (reedit)."""
        if self.strategy == "nullspace":
            params = dict(model.named_parameters())
            from editdecay.models.arch import get_adapter

            adapter = get_adapter(model)
            self.info["output_change"] = {
                n: nullspace.output_change(adapter.as_out_in(params[n].detach().float().cpu() - self.start[n]),
                                           self.keys[n].float()) for n in self.spec.rewritten}
        elif self.strategy == "reedit":
            if self.plan is None:
                raise ConfigError("reedit: before_training was not called")
            t = time.perf_counter()
            self.reedit_deltas, report = reedit.apply(model, tok, self.spec, self.plan,
                                                      reoptimise=self.options["reedit_reoptimise"], progress=progress)
            self._timed("reedit_apply", t)
            self.info["reedit"] = report

    def write(self, folder: Path) -> None:
        """Extra files in the fine-tune folder (the re-edit's deltas)."""
        if self.reedit_deltas:
            write_deltas(Path(folder) / REEDIT_DELTAS, self.reedit_deltas)

    def manifest(self) -> dict[str, Any]:
        if self.strategy == "reedit" and "reedit" not in self.info:
            raise ConfigError("preserve_strategy='reedit': the re-edit did not run (after_training was not called)")
        out = {"strategy": self.strategy, "edit_dir": self.edit_dir, "edit_manifest": self.spec.source,
               "rewritten": list(self.spec.rewritten), "rewritten_from": self.spec.rewritten_from,
               "options": self.options, **self.info,
               "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
               "extra_seconds": round(sum(self.seconds.values()), 3)}
        if self.strategy == "reedit" and "reedit" in self.info:  # its cost without the report-only evaluations
            out["extra_seconds"] = self.info["reedit"]["total_seconds"]
        if self.reedit_deltas:
            out["reedit_deltas"] = REEDIT_DELTAS
        return out
