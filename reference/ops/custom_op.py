"""`CustomOp` and `PluggableLayer`: layers that out-of-tree plugins can replace (contract §11).

A plugin decorates its class with `@InTreeOp.register_oot`; from then on `InTreeOp(...)`
builds the plugin's class. Each op picks its `forward_*` once, when it is built, from
`compilation_config.custom_ops` and `current_platform`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from reference.config import get_current_vllm_config
from reference.logger import init_logger, warning_once

logger = init_logger("vllm.model_executor.custom_op")

T = TypeVar("T", bound=type)

#: Registered op name (`"rms_norm"`) → in-tree class. Shared by CustomOp and PluggableLayer.
op_registry: dict[str, type] = {}
#: In-tree class *name* (`"RMSNorm"`) → the out-of-tree class that replaces it.
op_registry_oot: dict[str, type] = {}


def maybe_get_oot_by_class(class_type: type) -> type:
    """The out-of-tree replacement registered for `class_type`, else `class_type` itself."""
    return op_registry_oot.get(class_type.__name__, class_type)


def _register_in_tree(name: str, **class_attrs: Any) -> Callable[[T], T]:
    def decorator(op_cls: T) -> T:
        if name in op_registry:
            raise AssertionError(f"Duplicate op name: {name}")
        op_cls.name = name
        for attr, value in class_attrs.items():
            setattr(op_cls, attr, value)
        op_registry[name] = op_cls
        return op_cls

    return decorator


def _register_oot(
    in_tree_cls: type, decorated: Any, name: str | None, what: str
) -> Callable[[T], T] | T:
    def decorator(op_cls: T) -> T:
        # The key is the in-tree *class name*, not its registered op name.
        reg_name = name if name is not None else in_tree_cls.__name__
        if reg_name in op_registry_oot:
            raise AssertionError(f"Duplicate {what} name: {reg_name}")
        op_cls.name = reg_name
        op_registry_oot[reg_name] = op_cls
        return op_cls

    if decorated is None:  # `@Op.register_oot()` or `@CustomOp.register_oot(name="Op")`
        return decorator
    if isinstance(decorated, type):  # `@Op.register_oot`
        return decorator(decorated)
    raise TypeError("Decorator can only be applied to classes.")


def _instantiate(cls: type, base: type, log_msg: str) -> Any:
    target = op_registry_oot.get(cls.__name__, cls)
    if cls.__name__ in op_registry_oot:
        logger.debug(log_msg, cls.__name__, str(target))
    # nn.Module defines no __new__, so object.__new__ takes the class alone.
    return super(base, cls).__new__(target)


class PluggableLayer(nn.Module):
    """A layer replaced as a whole (no per-platform dispatch) by an out-of-tree class."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _instantiate(cls, PluggableLayer, "Instantiating pluggable layer: %s using %s")

    @classmethod
    def register(cls, name: str) -> Callable[[T], T]:
        return _register_in_tree(name)

    @classmethod
    def register_oot(cls, _decorated_layer_cls: Any = None, name: str | None = None) -> Any:
        return _register_oot(cls, _decorated_layer_cls, name, "layer")


class CustomOp(nn.Module):
    """An op with a native implementation and optional per-platform ones.

    `forward` calls the method picked at construction: `forward_native` when the op is
    disabled, else `forward_cuda` (CUDA), `forward_hip` (ROCm), `forward_cpu` (CPU),
    `forward_tpu`, `forward_xpu`, or `forward_oot` (an out-of-tree platform). Every
    platform method defaults to `forward_native`, so an op need only define that.
    """

    # The module-level registries, also reachable as class attributes (older plugins use these).
    op_registry = op_registry
    op_registry_oot = op_registry_oot

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Exact class-name match: subclasses of a replaced op are built as themselves.
        return _instantiate(cls, CustomOp, "Instantiating custom op: %s using %s")

    def __init__(self, *, enforce_enable: bool = False) -> None:
        super().__init__()
        self._enforce_enable = enforce_enable
        self._forward_method = self.dispatch_forward()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward_method(*args, **kwargs)

    def forward_native(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} defines no forward_native; a CustomOp needs at least that."
        )

    def forward_cuda(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_hip(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_cuda(*args, **kwargs)

    def forward_cpu(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_tpu(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_xpu(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def forward_oot(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward_native(*args, **kwargs)

    def dispatch_forward(self) -> Callable[..., Any]:
        """The `forward_*` method this op runs, for the current config and platform."""
        if not (self._enforce_enable or self.enabled()):
            return self.forward_native
        # Resolved here, not at import: importing an op module must not pick the platform.
        from reference.platforms import current_platform

        if current_platform.is_rocm():
            return self.forward_hip
        if current_platform.is_cpu():
            return self.forward_cpu
        if current_platform.is_tpu():
            return self.forward_tpu
        if current_platform.is_xpu():
            return self.forward_xpu
        if current_platform.is_out_of_tree():
            return self.forward_oot
        return self.forward_cuda

    @classmethod
    def enabled(cls) -> bool:
        """On unless `custom_ops` says otherwise: `"none"` turns all off, `"-name"` one."""
        custom_ops = _custom_ops()
        if not hasattr(cls, "name"):
            warning_once(
                logger,
                "Custom op %s was not registered, which means it won't appear in the op "
                "registry. It will be enabled/disabled based on the global settings.",
                cls.__name__,
            )
            return CustomOp.default_on()
        enabled = f"+{cls.name}" in custom_ops
        disabled = f"-{cls.name}" in custom_ops
        if enabled and disabled:
            raise AssertionError(f"Cannot enable and disable {cls.name}")
        return (CustomOp.default_on() or enabled) and not disabled

    @staticmethod
    def default_on() -> bool:
        """True with `"all"` or without `"none"` in `custom_ops` (the reference never compiles)."""
        custom_ops = _custom_ops()
        return not custom_ops.count("none") > 0 or custom_ops.count("all") > 0

    @classmethod
    def register(
        cls, name: str, dynamic_arg_dims: dict[str, int | list[int]] | None = None
    ) -> Callable[[T], T]:
        """Class decorator: register an in-tree op under `name` (AssertionError if taken).

        `dynamic_arg_dims` is kept on the class, as in vLLM; the reference never compiles.
        """
        return _register_in_tree(name, _dynamic_arg_dims=dynamic_arg_dims)

    @classmethod
    def register_oot(cls, _decorated_op_cls: Any = None, name: str | None = None) -> Any:
        """Class decorator: replace `cls` (or the op class named `name`) with the decorated class.

        Usable as `@Op.register_oot`, `@Op.register_oot()` or
        `@CustomOp.register_oot(name="Op")`. Registering the same name twice in one process
        raises AssertionError, so a plugin must register at most once (at module import).
        """
        return _register_oot(cls, _decorated_op_cls, name, "op")


def _custom_ops() -> list[str]:
    return list(get_current_vllm_config().compilation_config.custom_ops)
