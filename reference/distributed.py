"""Device communicators: the single-process base the built-in platforms return."""

from __future__ import annotations

from typing import Any


class DeviceCommunicatorBase:
    """Collective operations for one process group; a world of one needs no communication."""

    def __init__(
        self,
        cpu_group: Any = None,
        device: Any = None,
        device_group: Any = None,
        unique_name: str = "",
    ) -> None:
        self.cpu_group = cpu_group
        self.device = device
        self.device_group = device_group
        self.unique_name = unique_name
        self.world_size = 1
        self.rank = 0

    def all_reduce(self, input_: Any) -> Any:
        return input_

    def all_gather(self, input_: Any, dim: int = -1) -> Any:
        return input_

    def broadcast(self, input_: Any, src: int = 0) -> Any:
        return input_

    def destroy(self) -> None:
        """Release communication resources (none for a world of one)."""
