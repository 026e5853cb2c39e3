"""The `Platform` base class that out-of-tree platform plugins subclass (vLLM 0.32's contract)."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import os
import platform as _host_platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from reference.logger import init_logger, warning_once

if TYPE_CHECKING:
    from reference.attention import AttentionSelectorConfig

logger = init_logger("vllm.platforms.interface")


class PlatformEnum(enum.Enum):
    CUDA = enum.auto()
    ROCM = enum.auto()
    TPU = enum.auto()
    XPU = enum.auto()
    CPU = enum.auto()
    OOT = enum.auto()
    UNSPECIFIED = enum.auto()


class CpuArchEnum(enum.Enum):
    X86 = enum.auto()
    ARM = enum.auto()
    POWERPC = enum.auto()
    S390X = enum.auto()
    RISCV = enum.auto()
    OTHER = enum.auto()
    UNKNOWN = enum.auto()


class DeviceCapability(NamedTuple):
    major: int
    minor: int

    def as_version_str(self) -> str:
        return f"{self.major}.{self.minor}"

    def to_int(self) -> int:
        """`(8, 6)` → `86`; minor versions must be single digits."""
        assert 0 <= self.minor < 10
        return self.major * 10 + self.minor


_V2_RUNNER_VARIABLE = "VLLM_USE_V2_MODEL_RUNNER"


def _reject_removed_variables(removed: dict[str, str]) -> None:
    """The 0.34 part of `Platform.validate_environ`: variables that no longer work are errors."""
    for name, hint in removed.items():
        if name in os.environ:
            raise ValueError(f"{name} has been removed. {hint}")
    value = os.environ.get(_V2_RUNNER_VARIABLE)
    if value is None:
        return
    if value != "1":
        raise ValueError(
            f"{_V2_RUNNER_VARIABLE}={value} is no longer supported: Model Runner V1 has been "
            "removed. Unset this variable."
        )
    logger.warning(
        "%s=1 is redundant: Model Runner V2 is the only model runner. Unset this variable.",
        _V2_RUNNER_VARIABLE,
    )


class Platform:
    """A hardware back-end. Subclasses set `_enum`, `device_name` and `device_type`.

    Instances are made with no arguments (`resolve_obj_by_qualname(qualname)()`), and
    almost every hook is a classmethod, as in vLLM.
    """

    _enum: PlatformEnum
    device_name: str
    device_type: str

    dispatch_key: str = "CPU"
    ray_device_key: str = ""
    device_control_env_var: str = "VLLM_DEVICE_CONTROL_ENV_VAR_PLACEHOLDER"
    ray_noset_device_env_vars: list[str] = []
    simple_compile_backend: str = "inductor"
    dist_backend: str = ""
    supported_quantization: list[str] = []
    additional_env_vars: list[str] = []
    _global_graph_pool: Any = None

    # --- identity -----------------------------------------------------------------------
    def is_cuda(self) -> bool:
        return self._enum == PlatformEnum.CUDA

    def is_rocm(self) -> bool:
        return self._enum == PlatformEnum.ROCM

    def is_tpu(self) -> bool:
        return self._enum == PlatformEnum.TPU

    def is_xpu(self) -> bool:
        return self._enum == PlatformEnum.XPU

    def is_cpu(self) -> bool:
        return self._enum == PlatformEnum.CPU

    def is_out_of_tree(self) -> bool:
        return self._enum == PlatformEnum.OOT

    def is_unspecified(self) -> bool:
        return self._enum == PlatformEnum.UNSPECIFIED

    def is_cuda_alike(self) -> bool:
        return self._enum in (PlatformEnum.CUDA, PlatformEnum.ROCM)

    def is_zen_cpu(self) -> bool:
        return False

    def uses_host_device_handling(self) -> bool:
        return self.is_tpu()

    @classmethod
    def get_cpu_architecture(cls) -> CpuArchEnum:
        machine = _host_platform.machine().lower()
        if machine in ("x86_64", "amd64", "i386", "i686"):
            return CpuArchEnum.X86
        if machine.startswith(("arm", "aarch")):
            return CpuArchEnum.ARM
        if machine.startswith("ppc"):
            return CpuArchEnum.POWERPC
        if machine == "s390x":
            return CpuArchEnum.S390X
        if machine.startswith("riscv"):
            return CpuArchEnum.RISCV
        return CpuArchEnum.OTHER if machine else CpuArchEnum.UNKNOWN

    # --- configuration hooks ------------------------------------------------------------
    @classmethod
    def pre_register_and_update(cls, parser: Any | None = None) -> None:
        """Called while the CLI parser is built (with it) and from the engine config (without)."""

    @classmethod
    def apply_config_platform_defaults(cls, vllm_config: Any) -> None:
        """Platform defaults applied to the config before `check_and_update_config`."""

    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        """Adjust the engine config; the most important job is to set `worker_cls`."""

    @classmethod
    def verify_model_arch(cls, model_arch: str) -> None:
        """Raise if this platform cannot run `model_arch`."""

    @classmethod
    def verify_quantization(cls, quant: str) -> None:
        if cls.supported_quantization and quant not in cls.supported_quantization:
            raise ValueError(
                f"{quant} quantization is currently not supported in {cls.device_name}."
            )

    @classmethod
    def log_warnings(cls) -> None:
        """Log platform-specific warnings once the engine starts."""

    # --- components the engine asks for ---------------------------------------------------
    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: Any,
        attn_selector_config: AttentionSelectorConfig,
        num_heads: int | None = None,
    ) -> str:
        """The dotted qualname of the attention backend; vLLM 0.32 calls it by keyword."""
        return ""

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return "reference.distributed.DeviceCommunicatorBase"

    @classmethod
    def get_punica_wrapper(cls) -> str:
        raise NotImplementedError(f"{cls.__name__} does not support LoRA punica kernels.")

    @classmethod
    def get_compile_backend(cls) -> str:
        return cls.simple_compile_backend

    # --- device queries -----------------------------------------------------------------
    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> DeviceCapability | None:
        return None

    @classmethod
    def has_device_capability(cls, capability: tuple[int, int] | int, device_id: int = 0) -> bool:
        current = cls.get_device_capability(device_id)
        if current is None:
            return False
        if isinstance(capability, tuple):
            return current >= capability
        return current.to_int() >= capability

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        raise NotImplementedError

    @classmethod
    def get_device_uuid(cls, device_id: int = 0) -> str:
        raise NotImplementedError

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        raise NotImplementedError

    @classmethod
    def set_device(cls, device: Any) -> None:
        raise NotImplementedError

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        import torch

        torch.manual_seed(seed)

    @classmethod
    def inference_mode(cls) -> Any:
        import torch

        return torch.no_grad()

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False

    @classmethod
    def get_current_memory_usage(cls, device: Any = None) -> float:
        raise NotImplementedError

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return False

    @classmethod
    def support_static_graph_mode(cls) -> bool:
        return False

    @classmethod
    def use_custom_op_collectives(cls) -> bool:
        return False

    @classmethod
    def import_kernels(cls) -> None:
        """Import the platform's compiled kernels, if it has any."""

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        """Called in each worker right after the general plugins have loaded."""

    @classmethod
    def validate_request(cls, prompt: Any, params: Any, processed_inputs: Any = None) -> None:
        """Raise if this platform cannot serve the request."""

    @classmethod
    def validate_environ(cls, hard_fail: bool = False) -> None:
        """Warn (or raise, with `hard_fail`) about `VLLM_*` variables the engine does not know.

        From 0.34, whatever `hard_fail` says: a variable of `removed_environment_variables`
        raises ValueError, and so does `VLLM_USE_V2_MODEL_RUNNER` unless it is "1" (Model
        Runner V1 is gone), which only earns a warning that it is redundant.
        """
        from reference import envs
        from reference._version import contract_at_least

        if contract_at_least("0.34.0"):
            _reject_removed_variables(envs.removed_environment_variables)
        unknown = sorted(
            name
            for name in os.environ
            if name.startswith("VLLM_")
            and name not in envs.known_variables()
            and name not in cls.additional_env_vars
            and not (name == _V2_RUNNER_VARIABLE and contract_at_least("0.34.0"))
        )
        for name in unknown:
            if hard_fail:
                raise ValueError(f"Unknown vLLM environment variable detected: {name}")
            logger.warning("Unknown vLLM environment variable detected: %s", name)

    @classmethod
    @contextlib.contextmanager
    def device_scope(cls) -> Iterator[None]:
        yield

    def __getattr__(self, key: str) -> Any:
        # vLLM falls back to `torch.<device_type>.<key>`; missing attributes are not errors.
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        device_type = type(self).__dict__.get("device_type") or getattr(
            type(self), "device_type", None
        )
        if device_type and importlib.util.find_spec("torch") is not None:
            import torch

            device_module = getattr(torch, device_type, None)
            value = getattr(device_module, key, None) if device_module is not None else None
            if value is not None:
                return value
        warning_once(logger, "Current platform %s does not have '%s' attribute.", device_type, key)
        return None


class UnspecifiedPlatform(Platform):
    _enum = PlatformEnum.UNSPECIFIED
    device_name = ""
    device_type = ""
