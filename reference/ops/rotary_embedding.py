"""Rotary position embedding (RoPE) as a `CustomOp`, the op out-of-tree plugins replace most."""

from __future__ import annotations

import torch

from reference.ops.custom_op import CustomOp


def apply_rotary_emb(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox_style: bool
) -> torch.Tensor:
    """Rotate `x` [tokens, heads, rotary_dim] by angles whose cos/sin are [tokens, rotary_dim/2].

    NeoX style pairs the two halves of the vector; GPT-J style pairs neighbours.
    """
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    if is_neox_style:
        x1, x2 = torch.chunk(x, 2, dim=-1)
    else:
        x1, x2 = x[..., ::2], x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox_style:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


@CustomOp.register("rotary_embedding")
class RotaryEmbedding(CustomOp):
    """RoPE over the first `rotary_dim` dims of each head, with a precomputed cos/sin cache."""

    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position_embeddings: int,
        base: float,
        is_neox_style: bool,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        if rotary_dim > head_size or rotary_dim % 2:
            raise ValueError(
                f"rotary_dim must be even and at most head_size ({head_size}), got {rotary_dim}."
            )
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position_embeddings = max_position_embeddings
        self.base = base
        self.is_neox_style = is_neox_style
        self.dtype = dtype
        # Not persistent: it is derived from the arguments, never read from a checkpoint.
        self.register_buffer("cos_sin_cache", self._compute_cos_sin_cache().to(dtype), False)

    def _compute_cos_sin_cache(self) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float) / self.rotary_dim
        inv_freq = 1.0 / (self.base**exponents)
        t = torch.arange(self.max_position_embeddings, dtype=torch.float)
        freqs = torch.outer(t, inv_freq)
        return torch.cat((freqs.cos(), freqs.sin()), dim=-1)

    def forward_native(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate `query` and `key` ([tokens, heads * head_size]) at `positions` ([tokens])."""
        positions = positions.flatten()
        cos_sin = self.cos_sin_cache.index_select(0, positions)
        cos, sin = cos_sin.chunk(2, dim=-1)
        return self._rotate(query, cos, sin), (None if key is None else self._rotate(key, cos, sin))

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(cos.shape[0], -1, self.head_size)
        rot = apply_rotary_emb(x[..., : self.rotary_dim], cos, sin, self.is_neox_style)
        return torch.cat((rot, x[..., self.rotary_dim :]), dim=-1).reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"head_size={self.head_size}, rotary_dim={self.rotary_dim}, "
            f"max_position_embeddings={self.max_position_embeddings}, base={self.base}, "
            f"is_neox_style={self.is_neox_style}"
        )
