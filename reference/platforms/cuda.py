"""The built-in CUDA platform and its detector (NVML first, torch second, never required)."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
from typing import Any

from reference.platforms.interface import DeviceCapability, Platform, PlatformEnum


def _nvml_device_count() -> int | None:
    """Devices NVML reports, or None where the NVML library cannot be loaded."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        return int(count.value) if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()


def _driver_present() -> bool:
    # On Linux, no NVIDIA kernel driver means no CUDA device: answer without importing torch.
    if not sys.platform.startswith("linux"):
        return True
    return os.path.exists("/proc/driver/nvidia") or bool(glob.glob("/dev/nvidia[0-9]*"))


def cuda_device_count() -> int:
    """Number of CUDA devices, asked of NVML when available, else of torch if installed.

    Neither creates a CUDA context; a machine without torch or without a driver never
    imports torch.
    """
    count = _nvml_device_count()
    if count is not None:
        return count
    if _driver_present() and importlib.util.find_spec("torch") is not None:
        import torch

        return int(torch.cuda.device_count())
    return 0


class CudaPlatform(Platform):
    _enum = PlatformEnum.CUDA
    device_name = "cuda"
    device_type = "cuda"
    dispatch_key = "CUDA"
    ray_device_key = "GPU"
    dist_backend = "nccl"
    device_control_env_var = "CUDA_VISIBLE_DEVICES"

    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> DeviceCapability | None:
        import torch

        major, minor = torch.cuda.get_device_capability(device_id)
        return DeviceCapability(major=major, minor=minor)

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        import torch

        return str(torch.cuda.get_device_name(device_id))

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        import torch

        return int(torch.cuda.get_device_properties(device_id).total_memory)

    @classmethod
    def set_device(cls, device: Any) -> None:
        import torch

        torch.cuda.set_device(device)

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return True

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        parallel_config = getattr(vllm_config, "parallel_config", None)
        if parallel_config is not None and parallel_config.worker_cls == "auto":
            parallel_config.worker_cls = "reference.engine.worker.GPUWorker"

    @classmethod
    def get_attn_backend_cls(
        cls, selected_backend: Any, attn_selector_config: Any, num_heads: int | None = None
    ) -> str:
        return "reference.attention.TorchSDPABackend"
