"""Integer helpers of `vllm.utils.math_utils` that plugins import (block and page sizes)."""

from __future__ import annotations

__all__ = ["cdiv", "largest_power_of_2_divisor", "next_power_of_2", "round_down", "round_up"]


def cdiv(a: int, b: int) -> int:
    """`a / b` rounded up."""
    return -(a // -b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= `n` (1 for n < 1)."""
    if n < 1:
        return 1
    return 1 << (n - 1).bit_length()


def round_up(x: int, y: int) -> int:
    """`x` rounded up to a multiple of `y`."""
    return ((x + y - 1) // y) * y


def round_down(x: int, y: int) -> int:
    """`x` rounded down to a multiple of `y`."""
    return (x // y) * y


def largest_power_of_2_divisor(n: int) -> int:
    """The largest power of two that divides `n`."""
    return n & -n
