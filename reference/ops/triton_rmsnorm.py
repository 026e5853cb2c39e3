"""RMSNorm (optionally fused with a residual add) as a Triton kernel, for `RMSNorm.forward_cuda`.

The kernel reproduces `RMSNorm.forward_native` step by step, so results match to rounding:

- the input (plus the residual, in float32) is normalised in float32;
- the normalised value is rounded to the input's dtype *before* the weight is applied, as the
  native code does, then multiplied by the weight in the promoted dtype of input and weight;
- with a residual, the second output is `x + residual` rounded to the input's dtype.

Rows up to `MAX_FUSED_SIZE` elements are done in one block (one read of the row); longer rows
take two passes over the row (sum of squares, then normalise), re-reading the inputs so the
sum never sees a rounded intermediate.

Importing this module does not fail without Triton: `unavailable_reason()` says why the kernel
cannot run, and callers fall back to the native code. Set `TRITON_INTERPRET=1` *before* Triton
is imported to run the kernel on CPU tensors (slow; for tests).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # Triton is optional: the native path needs none of it.
    triton = None
    tl = None
    _IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None

#: The widest row done in a single block; wider rows loop over blocks of this size.
MAX_FUSED_SIZE = 8192

#: Input dtypes the kernel takes; others go to the native code.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the kernel cannot run on `device` (None when it can)."""
    if _IMPORT_ERROR is not None:
        return f"Triton is not importable ({_IMPORT_ERROR}); install it with `pip install triton`"
    if device is not None and device.type != "cuda" and not interpreting():
        return (
            f"the tensor is on {device.type!r}, and Triton kernels run on GPU tensors only "
            "(set TRITON_INTERPRET=1 before importing Triton to run them on CPU, slowly)"
        )
    return None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr,
        residual_ptr,
        weight_ptr,
        out_ptr,
        residual_out_ptr,
        x_row_stride,
        residual_row_stride,
        out_row_stride,
        residual_out_row_stride,
        n_cols,
        eps,
        HAS_RESIDUAL: tl.constexpr,
        HAS_WEIGHT: tl.constexpr,
        BLOCK: tl.constexpr,
        SINGLE_BLOCK: tl.constexpr,
    ):
        # One program per row. Row offsets in int64: rows * stride can pass 2**31 elements.
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_row_stride
        r_row = residual_ptr + row * residual_row_stride
        out_row = out_ptr + row * out_row_stride
        r_out_row = residual_out_ptr + row * residual_out_row_stride
        cols = tl.arange(0, BLOCK)
        in_dtype = x_ptr.dtype.element_ty

        if SINGLE_BLOCK:
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                x += tl.load(r_row + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(r_out_row + cols, x.to(in_dtype), mask=mask)
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
            # Round to the input dtype before the weight, exactly as forward_native does.
            y = (x * rstd).to(in_dtype).to(tl.float32)
            if HAS_WEIGHT:
                y *= tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                offs = start + cols
                mask = offs < n_cols
                x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
                if HAS_RESIDUAL:
                    x += tl.load(r_row + offs, mask=mask, other=0.0).to(tl.float32)
                    tl.store(r_out_row + offs, x.to(in_dtype), mask=mask)
                acc += x * x
            rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + eps)
            for start in range(0, n_cols, BLOCK):
                offs = start + cols
                mask = offs < n_cols
                # Re-read the inputs rather than residual_out: the sum must be in float32.
                x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
                if HAS_RESIDUAL:
                    x += tl.load(r_row + offs, mask=mask, other=0.0).to(tl.float32)
                y = (x * rstd).to(in_dtype).to(tl.float32)
                if HAS_WEIGHT:
                    y *= tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_row + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """`t` as a (rows, hidden) view with unit stride along the row (copied only if needed)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    try:
        return t.view(-1, hidden)
    except RuntimeError:  # leading dims not collapsible into one stride
        return t.contiguous().view(-1, hidden)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`RMSNorm.forward_native(x, residual)` computed by the Triton kernel.

    Returns the normalised tensor, or `(normalised, x + residual)` with a residual; the inputs
    are never modified. RuntimeError (naming the fix) when the kernel cannot run.
    """
    reason = unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"The Triton RMSNorm kernel cannot run: {reason}.")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"The Triton RMSNorm kernel takes float32, float16 or bfloat16 input, not {x.dtype}; "
            "use RMSNorm.forward_native for other dtypes."
        )
    hidden = x.shape[-1]
    if weight is not None and weight.shape != (hidden,):
        raise ValueError(
            f"RMSNorm weight has shape {tuple(weight.shape)}; expected ({hidden},) for input "
            f"of shape {tuple(x.shape)}."
        )
    if residual is not None and residual.shape != x.shape:
        raise ValueError(
            f"The residual's shape {tuple(residual.shape)} differs from the input's "
            f"{tuple(x.shape)}; the fused add needs them equal."
        )
    # The native code multiplies a tensor of x's dtype by the weight: torch's type promotion.
    out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    residual_out = torch.empty_like(x) if residual is not None else None
    if x.numel() == 0:
        return out if residual_out is None else (out, residual_out)

    x2 = _rows(x, hidden)
    r2 = _rows(residual, hidden) if residual is not None else x2
    out2 = out.view(-1, hidden)
    r_out2 = residual_out.view(-1, hidden) if residual_out is not None else out2
    w = weight.contiguous() if weight is not None else x2  # a dummy pointer when unused

    single = hidden <= MAX_FUSED_SIZE
    block = triton.next_power_of_2(hidden) if single else MAX_FUSED_SIZE
    # Wider blocks need more warps to keep registers per thread in check.
    num_warps = min(max(block // 256, 1), 16)
    _rms_norm_kernel[(x2.shape[0],)](
        x2,
        r2,
        w,
        out2,
        r_out2,
        x2.stride(0),
        r2.stride(0),
        out2.stride(0),
        r_out2.stride(0),
        hidden,
        float(eps),
        HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None,
        BLOCK=block,
        SINGLE_BLOCK=single,
        num_warps=num_warps,
    )
    return out if residual_out is None else (out, residual_out)
