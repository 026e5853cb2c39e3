"""The built-in CPU platform."""

from __future__ import annotations

from typing import Any

from reference.platforms.interface import Platform, PlatformEnum


class CpuPlatform(Platform):
    _enum = PlatformEnum.CPU
    device_name = "cpu"
    device_type = "cpu"
    dispatch_key = "CPU"
    dist_backend = "gloo"

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "cpu"

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        parallel_config = getattr(vllm_config, "parallel_config", None)
        if parallel_config is not None and parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = "reference.engine.worker.CPUWorker"

    @classmethod
    def get_attn_backend_cls(
        cls, selected_backend: Any, attn_selector_config: Any, num_heads: int | None = None
    ) -> str:
        return "reference.attention.TorchSDPABackend"
