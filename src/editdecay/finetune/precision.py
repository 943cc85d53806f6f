"""Fine-tuning a bfloat16 model with float32 optimizer state: float32 master copies of the trained weights.

The choice: the model's forward and backward run in its own dtype; each trained parameter stored in bfloat16
gets a float32 master copy, and AdamW's moments and update live on the masters. After each step the masters are rounded into the model. Without them, AdamW updates of order
lr * 1 ≈ 2e-4 relative to a weight would mostly round away in bfloat16's 8-bit mantissa. Parameters that are
float32 already (PEFT keeps LoRA/DoRA adapters in float32 over a bfloat16 base) are their own masters, so
LoRA over a bfloat16 base costs nothing extra. float16 would also need loss scaling and is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from editdecay.errors import ConfigError

HALF = (torch.bfloat16, torch.float16)


class MasterWeights:
    """Pairs (model parameter, float32 master) for the trained half-precision parameters.

    ``named`` is what the optimizer, the clipping and the checkpoint see: the masters in place of the
    half-precision parameters, float32 parameters as they are.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        fp16 = [n for n, p in named if p.dtype == torch.float16]
        if fp16:
            raise ConfigError(f"--dtype float16: fine-tuning float16 weights ({fp16[0]} and {len(fp16) - 1} more) "
                              "needs loss scaling, which editdecay does not do; use --dtype bfloat16 or float32")
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.named: list[tuple[str, nn.Parameter]] = []
        for name, p in named:
            if p.dtype in HALF:
                master = nn.Parameter(p.detach().to(torch.float32).clone())
                self.pairs.append((p, master))
                self.named.append((name, master))
            else:
                self.named.append((name, p))

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    def grads_to_master(self) -> None:
        """Move the model's gradients onto the masters (in float32) and free the half-precision ones."""
        for p, master in self.pairs:
            master.grad = None if p.grad is None else p.grad.to(torch.float32)
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Round the masters into the model's parameters (after a step or a checkpoint restore)."""
        for p, master in self.pairs:
            p.copy_(master)


__all__ = ["MasterWeights"]
