"""Gated activations as `CustomOp`s."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reference.ops.custom_op import CustomOp


@CustomOp.register("silu_and_mul")
class SiluAndMul(CustomOp):
    """`silu(x[..., :d]) * x[..., d:]` for an input whose last dimension is `2 * d`."""

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]
