"""RMSNorm as a `CustomOp`; the built-in Llama uses it, so a platform's kernel for it runs."""

from __future__ import annotations

import torch
from torch import nn

from reference.logger import init_logger, warning_once
from reference.ops.custom_op import CustomOp

logger = init_logger("vllm.model_executor.layers.layernorm")


@CustomOp.register("rms_norm")
class RMSNorm(CustomOp):
    """`x / rms(x) * weight`, computed in float32; with `residual`, adds it first (fused form)."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        has_weight: bool = True,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.has_weight = has_weight
        weight = torch.ones(hidden_size, dtype=dtype or torch.get_default_dtype())
        self.weight = nn.Parameter(weight, requires_grad=False) if has_weight else None

    def forward_native(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalise `x`; with `residual`, return `(normalised x + residual, x + residual)`."""
        orig_dtype = x.dtype
        x = x.to(torch.float32)
        if residual is not None:
            x = x + residual.to(torch.float32)
            residual = x.to(orig_dtype)
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        x = (x * torch.rsqrt(variance + self.variance_epsilon)).to(orig_dtype)
        if self.weight is not None:
            x = x * self.weight
        return x if residual is None else (x, residual)

    def forward_cuda(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The Triton kernel (same results as `forward_native`), else `forward_native`.

        The fallback is logged once per reason: a missing Triton must not stop a model from
        running, but the user should learn why the kernel is not used.
        """
        # Imported here: importing Triton is slow and must follow any TRITON_* settings.
        from reference.ops import triton_rmsnorm

        reason = triton_rmsnorm.unavailable_reason(x.device)
        if reason is None and x.dtype not in triton_rmsnorm.SUPPORTED_DTYPES:
            reason = f"the kernel takes float32, float16 or bfloat16 input, not {x.dtype}"
        if reason is not None:
            warning_once(logger, "RMSNorm.forward_cuda runs forward_native: %s.", reason)
            return self.forward_native(x, residual)
        return triton_rmsnorm.rms_norm(x, self.weight, self.variance_epsilon, residual)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, eps={self.variance_epsilon}"
