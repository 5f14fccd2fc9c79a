"""A method written the way a user adds one: this file and nothing else (no loop, loader or distill edit).

``WarmupBank``: cross-entropy plus a consistency term between the student's logits and a per-sample
memory bank of its own past logits (an exponential moving average indexed by ``ctx.index``), whose
weight warms up linearly over the first ``warmup`` epochs (``ctx.epoch``), as DKD warms its loss up.
The bank and a per-sample visit count are buffers, so they are saved with the training state and a
resumed run continues with exactly the bank it had.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_utils.train_kd import Distiller, StepContext


class WarmupBank(Distiller):
    family = None  # outside kd_utils: its runs are keyed on this class's source

    def __init__(self, student, n_samples: int, num_classes: int = 10, warmup: int = 2, beta: float = 0.5,
                 momentum: float = 0.5):
        super().__init__(student, None)
        self.warmup, self.beta, self.momentum = int(warmup), float(beta), float(momentum)
        self.register_buffer("bank", torch.zeros(n_samples, num_classes))
        self.register_buffer("visits", torch.zeros(n_samples, dtype=torch.long))

    def weight(self, ctx: StepContext) -> float:
        return self.beta * min(1.0, ctx.epoch / self.warmup)

    def forward(self, x, y, ctx: StepContext | None = None):
        if ctx is None or ctx.index is None:
            raise ValueError("WarmupBank needs the batch's sample indices (ctx.index)")
        logits = self.student(x)
        past = self.bank[ctx.index]
        losses = {"loss_ce": F.cross_entropy(logits.float(), y),
                  "loss_bank": self.weight(ctx) * F.mse_loss(logits.float(), past)}
        with torch.no_grad():
            self.bank[ctx.index] = self.momentum * past + (1 - self.momentum) * logits.detach().float()
            self.visits[ctx.index] += 1
        return logits, losses

    def describe(self):
        return {"method": "WarmupBank", "warmup": self.warmup, "beta": self.beta, "momentum": self.momentum}
