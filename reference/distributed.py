"""Distributed state as one process sees it: a world of one rank (`vllm.distributed` and
`vllm.distributed.parallel_state`), and the device communicator the built-in platforms return.

The reference runs every model in one process, so each parallel group (tensor, pipeline,
data, expert) has one rank: world size 1, rank 0, and collectives that return their input
unchanged, as vLLM's own do when a group has a single rank. Initialising the distributed
environment records nothing; the questions a plugin asks afterwards answer as above.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "DeviceCommunicatorBase",
    "GroupCoordinator",
    "divide",
    "ensure_divisibility",
    "ensure_model_parallel_initialized",
    "get_dp_group",
    "get_ep_group",
    "get_pipeline_model_parallel_rank",
    "get_pp_group",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "get_tp_group",
    "get_world_group",
    "init_distributed_environment",
    "initialize_model_parallel",
    "model_parallel_is_initialized",
    "parallel_state",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
    "tensor_model_parallel_gather",
    "tensor_model_parallel_reduce_scatter",
]


class DeviceCommunicatorBase:
    """Collective operations for one process group; a world of one needs no communication."""

    def __init__(
        self,
        cpu_group: Any,
        device: Any = None,
        device_group: Any = None,
        unique_name: str = "",
        global_ranks: list[int] | None = None,
        global_world_size: int | None = None,
        use_all2all: bool = False,
    ) -> None:
        self.cpu_group = cpu_group
        self.global_ranks = global_ranks if global_ranks is not None else [0]
        self.global_world_size = global_world_size if global_world_size is not None else 1
        self.use_all2all = use_all2all
        self.device = device
        self.device_group = device_group
        self.unique_name = unique_name
        self.world_size = 1
        self.rank = 0

    def all_reduce(self, input_: Any) -> Any:
        return input_

    def all_gather(self, input_: Any, dim: int = -1) -> Any:
        return input_

    def broadcast(self, tensor: Any, src: int = 0) -> Any:
        return tensor

    def destroy(self) -> None:
        """Release communication resources (none for a world of one)."""


class GroupCoordinator:
    """One parallel group of a single rank: `world_size` 1, `rank_in_group` 0, first and
    last rank at once, and collectives that return their input (or None where vLLM's
    return nothing to non-destination ranks: there are none)."""

    def __init__(
        self,
        group_ranks: list[list[int]],
        local_rank: int,
        torch_distributed_backend: Any,
        use_device_communicator: bool,
        use_message_queue_broadcaster: bool = False,
        group_name: str | None = None,
        use_all2all: bool = False,
    ) -> None:
        if any(len(ranks) != 1 for ranks in group_ranks):
            raise ValueError(f"The reference engine's groups have one rank, not {group_ranks}.")
        self.unique_name = group_name or "anonymous"
        self.backend = torch_distributed_backend
        self.ranks = [0]
        self.rank = 0
        self.local_rank = 0
        self.world_size = 1
        self.rank_in_group = 0
        self.device_communicator: DeviceCommunicatorBase | None = None

    @property
    def first_rank(self) -> int:
        return self.ranks[0]

    @property
    def last_rank(self) -> int:
        return self.ranks[-1]

    @property
    def is_first_rank(self) -> bool:
        return self.rank == self.first_rank

    @property
    def is_last_rank(self) -> bool:
        return self.rank == self.last_rank

    @property
    def next_rank(self) -> int:
        return self.ranks[(self.rank_in_group + 1) % self.world_size]

    @property
    def prev_rank(self) -> int:
        return self.ranks[(self.rank_in_group - 1) % self.world_size]

    def all_reduce(self, input_: Any) -> Any:
        return input_

    def all_gather(self, input_: Any, dim: int = -1) -> Any:
        return input_

    def gather(self, input_: Any, dst: int = 0, dim: int = -1) -> Any:
        return input_

    def reduce_scatter(self, input_: Any, dim: int = -1) -> Any:
        return input_

    def broadcast(self, input_: Any, src: int = 0) -> Any:
        return input_

    def broadcast_object(self, obj: Any | None = None, src: int = 0) -> Any:
        return obj

    def broadcast_tensor_dict(
        self,
        tensor_dict: dict[str, Any] | None = None,
        src: int = 0,
        group: Any = None,
        metadata_group: Any = None,
    ) -> Any:
        return tensor_dict

    def barrier(self) -> None:
        """Nothing to wait for in a group of one."""

    def destroy(self) -> None:
        """Nothing to release in a group of one."""


_GROUPS: dict[str, GroupCoordinator] = {}


def _group(name: str) -> GroupCoordinator:
    if name not in _GROUPS:
        _GROUPS[name] = GroupCoordinator([[0]], 0, "gloo", False, group_name=name)
    return _GROUPS[name]


def get_world_group() -> GroupCoordinator:
    return _group("world")


def get_tp_group() -> GroupCoordinator:
    """The tensor-parallel group."""
    return _group("tp")


def get_pp_group() -> GroupCoordinator:
    """The pipeline-parallel group."""
    return _group("pp")


def get_dp_group() -> GroupCoordinator:
    """The data-parallel group."""
    return _group("dp")


def get_ep_group() -> GroupCoordinator:
    """The expert-parallel group."""
    return _group("ep")


def get_tensor_model_parallel_world_size() -> int:
    return get_tp_group().world_size


def get_tensor_model_parallel_rank() -> int:
    return get_tp_group().rank_in_group


def get_pipeline_model_parallel_rank() -> int:
    return get_pp_group().rank_in_group


def tensor_model_parallel_all_reduce(input_: Any) -> Any:
    return get_tp_group().all_reduce(input_)


def tensor_model_parallel_all_gather(input_: Any, dim: int = -1) -> Any:
    return get_tp_group().all_gather(input_, dim)


def tensor_model_parallel_gather(input_: Any, dst: int = 0, dim: int = -1) -> Any:
    return get_tp_group().gather(input_, dst, dim)


def tensor_model_parallel_reduce_scatter(input_: Any, dim: int = -1) -> Any:
    return get_tp_group().reduce_scatter(input_, dim)


def ensure_divisibility(numerator: int, denominator: int) -> None:
    """Raise AssertionError unless `denominator` divides `numerator` (as vLLM asserts)."""
    assert numerator % denominator == 0, f"{numerator} is not divisible by {denominator}"


def divide(numerator: int, denominator: int) -> int:
    """`numerator // denominator`, asserting that it divides evenly."""
    ensure_divisibility(numerator, denominator)
    return numerator // denominator


def init_distributed_environment(
    world_size: int = -1,
    rank: int = -1,
    distributed_init_method: str = "env://",
    local_rank: int = -1,
    backend: str = "nccl",
    timeout: Any = None,
) -> None:
    """Accept a world of one (the reference's only one); refuse a larger world."""
    if world_size > 1:
        raise ValueError(
            f"The reference engine runs in one process; a distributed world of {world_size} "
            "ranks needs the real vLLM (`--engine vllm`)."
        )


def initialize_model_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    prefill_context_model_parallel_size: int = 1,
    decode_context_model_parallel_size: int | None = 1,
    backend: str | None = None,
) -> None:
    """Accept parallel sizes of one; anything larger needs several processes."""
    _require_single(tensor_model_parallel_size, pipeline_model_parallel_size)


def ensure_model_parallel_initialized(
    tensor_model_parallel_size: int,
    pipeline_model_parallel_size: int,
    prefill_context_model_parallel_size: int = 1,
    decode_context_model_parallel_size: int | None = 1,
    backend: str | None = None,
) -> None:
    """Accept parallel sizes of one (vLLM's groups of this process), refuse others."""
    _require_single(tensor_model_parallel_size, pipeline_model_parallel_size)


def model_parallel_is_initialized() -> bool:
    """Always: the single-rank groups exist from the start."""
    return True


def _require_single(tp: int, pp: int) -> None:
    if tp != 1 or pp != 1:
        raise ValueError(
            f"The reference engine runs one rank; tensor_parallel_size={tp}, "
            f"pipeline_parallel_size={pp} need the real vLLM (`--engine vllm`)."
        )


#: `from vllm.distributed import parallel_state`: this same module answers both paths.
parallel_state = sys.modules[__name__]
