"""The reference's public face: which `vllm.*` module paths it answers, and `mount()`.

`SURFACE` is the single table that knows vLLM's module layout. After `mount()`,
`import vllm.plugins` returns the very module object `reference.plugins`; a `vllm.*` path
outside the table raises an ImportError that says so.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: `vllm` module path → the reference module that answers it.
SURFACE: dict[str, str] = {
    # core: loader, platforms, configuration
    "vllm.envs": "reference.envs",
    "vllm.logger": "reference.logger",
    "vllm.logging_utils": "reference.logging_utils",
    "vllm.plugins": "reference.plugins",
    "vllm.platforms": "reference.platforms",
    "vllm.platforms.interface": "reference.platforms.interface",
    "vllm.platforms.cpu": "reference.platforms.cpu",
    "vllm.platforms.cuda": "reference.platforms.cuda",
    "vllm.utils": "reference.utils",
    "vllm.utils.import_utils": "reference.utils",
    "vllm.config": "reference.config",
    "vllm.distributed.device_communicators.base_device_communicator": "reference.distributed",
    "vllm.v1.attention.selector": "reference.attention",
    "vllm.v1.attention.backends.registry": "reference.attention",
    # requests and results
    "vllm.sampling_params": "reference.sampling_params",
    "vllm.pooling_params": "reference.pooling_params",
    "vllm.inputs": "reference.inputs",
    "vllm.outputs": "reference.outputs",
    # models and custom ops (torch)
    "vllm.model_executor.models": "reference.models",
    "vllm.model_executor.models.registry": "reference.models.registry",
    "vllm.model_executor.models.llama": "reference.models.llama",
    "vllm.model_executor.models.opt": "reference.models.opt",
    "vllm.model_executor.models.gpt2": "reference.models.gpt2",
    "vllm.model_executor.models.utils": "reference.models.utils",
    "vllm.model_executor.layers.pooler": "reference.models.pooler",
    "vllm.model_executor.custom_op": "reference.ops.custom_op",
    "vllm.model_executor.layers.rotary_embedding": "reference.ops.rotary_embedding",
    "vllm.model_executor.layers.layernorm": "reference.ops.layernorm",
    "vllm.model_executor.layers.activation": "reference.ops.activation",
    # model building blocks plugins subclass or compose, on one rank (from the corpus census)
    "vllm.model_executor.layers.linear": "reference.layers.linear",
    "vllm.model_executor.layers.vocab_parallel_embedding": (
        "reference.layers.vocab_parallel_embedding"
    ),
    "vllm.model_executor.layers.logits_processor": "reference.layers.logits_processor",
    "vllm.model_executor.layers.utils": "reference.layers.utils",
    "vllm.model_executor.utils": "reference.layers.utils",
    "vllm.model_executor.layers.quantization": "reference.layers.quantization",
    "vllm.model_executor.layers.quantization.base_config": "reference.layers.quantization",
    "vllm.model_executor.layers.mamba.mamba_utils": "reference.layers.mamba_utils",
    "vllm.model_executor.model_loader": "reference.model_loader",
    "vllm.model_executor.model_loader.base_loader": "reference.model_loader",
    "vllm.model_executor.model_loader.utils": "reference.model_loader",
    "vllm.model_executor.model_loader.weight_utils": "reference.model_loader",
    "vllm.utils.torch_utils": "reference.torch_utils",
    "vllm.forward_context": "reference.forward_context",
    "vllm.distributed": "reference.distributed",
    "vllm.distributed.parallel_state": "reference.distributed",
    "vllm.distributed.communication_op": "reference.distributed",
    # encoder-cache transfer: the connector interface, never configured on one instance
    "vllm.distributed.ec_transfer": "reference.ec_transfer",
    "vllm.distributed.ec_transfer.ec_transfer_state": "reference.ec_transfer",
    "vllm.distributed.ec_transfer.ec_connector.base": "reference.ec_transfer",
    "vllm.distributed.ec_transfer.ec_connector.factory": "reference.ec_transfer",
    "vllm.reasoning": "reference.reasoning",
    "vllm.tool_parsers": "reference.tool_parsers",
    "vllm.tool_parsers.abstract_tool_parser": "reference.tool_parsers",
    "vllm.tool_parsers.utils": "reference.tool_parsers",
    "vllm.transformers_utils.config": "reference.hf_config_registry",
    "vllm.utils.argparse_utils": "reference.argparse_utils",
    "vllm.sequence": "reference.sequence",
    "vllm.utils.math_utils": "reference.math_utils",
    "vllm.model_executor.models.interfaces": "reference.models.interfaces",
    # where vLLM defines the configuration classes that `vllm.config` re-exports
    **{
        f"vllm.config.{part}": "reference.config"
        for part in (
            "cache",
            "compilation",
            "device",
            "load",
            "lora",
            "model",
            "observability",
            "parallel",
            "pooler",
            "scheduler",
            "vllm",
        )
    },
    # stat loggers
    "vllm.v1.metrics.loggers": "reference.metrics",
    "vllm.v1.metrics.stats": "reference.metrics",
    # IO processors
    "vllm.plugins.io_processors": "reference.io_processors",
    "vllm.plugins.io_processors.interface": "reference.io_processors",
    "vllm.renderers": "reference.io_processors",
    # endpoint plugins and the task names they require
    "vllm.plugins.endpoint_plugins": "reference.endpoints",
    "vllm.plugins.endpoint_plugins.interface": "reference.endpoints",
    "vllm.tasks": "reference.tasks",
    # LoRA
    "vllm.lora.request": "reference.lora.request",
    "vllm.lora.resolver": "reference.lora.resolver",
    "vllm.plugins.lora_resolvers.filesystem_resolver": "reference.lora.filesystem_resolver",
    # logits processors: the V1 interface and the Model Runner V2 one
    "vllm.v1.sample.logits_processor": "reference.logits.v1",
    "vllm.v1.sample.logits_processor.interface": "reference.logits.v1",
    "vllm.v1.sample.logits_processor.builtin": "reference.logits.v1",
    "vllm.v1.sample.logits_processor.state": "reference.logits.v1",
    # Model Runner V1's sampler layer and the output types it returns
    "vllm.v1.sample.sampler": "reference.sampler",
    "vllm.v1.sample.metadata": "reference.sampler",
    "vllm.v1.outputs": "reference.sampler",
    "vllm.v1.worker.gpu.sample.logits_processor": "reference.logits.v2",
    "vllm.v1.worker.gpu.sample.logits_processor.interface": "reference.logits.v2",
    "vllm.v1.worker.gpu.sample.logits_processor.loader": "reference.logits.loader",
    "vllm.exceptions": "reference.logits.errors",
    # the engine: entry points, engine core, executors and workers
    "vllm.engine.arg_utils": "reference.engine.args",
    "vllm.entrypoints.llm": "reference.engine.llm",
    "vllm.logprobs": "reference.engine.llm",
    "vllm.v1.engine.async_llm": "reference.engine.async_llm",
    "vllm.v1.engine.core": "reference.engine.core",
    "vllm.v1.engine.llm_engine": "reference.engine.llm_engine",
    "vllm.v1.executor.abstract": "reference.engine.executor",
    "vllm.v1.executor.multiproc_executor": "reference.engine.executor",
    "vllm.v1.executor.uniproc_executor": "reference.engine.executor",
    "vllm.v1.executor.ray_executor": "reference.engine.ray_executor",
    "vllm.v1.executor.ray_utils": "reference.engine.ray_executor",
    "vllm.ray.ray_env": "reference.engine.ray_executor",
    "vllm.v1.worker.worker_base": "reference.engine.worker",
    "vllm.v1.worker.cpu_worker": "reference.engine.worker",
    "vllm.v1.worker.gpu_worker": "reference.engine.worker",
}

#: `vllm` module paths that a contract release deleted → that release: from it on, importing
#: them fails as on that vLLM (`ModuleNotFoundError`), though they stay in `SURFACE` for the
#: older contracts the reference also models (`reference._version`).
REMOVED_IN: dict[str, str] = {
    # 0.34 removed Model Runner V1 and its logits-processor interface.
    "vllm.v1.sample.logits_processor": "0.34.0",
    "vllm.v1.sample.logits_processor.interface": "0.34.0",
    "vllm.v1.sample.logits_processor.builtin": "0.34.0",
    "vllm.v1.sample.logits_processor.state": "0.34.0",
    "vllm.v1.sample.sampler": "0.34.0",
    "vllm.v1.sample.metadata": "0.34.0",
}

_FACADE_NAME = "vllm"
#: Holds `vllm/__init__.py`, a shim that mounts the reference when found on `sys.path`;
#: `mount()` puts it on `sys.path` so that spawned children (which inherit the parent's
#: `sys.path`) mount it too on their first `import vllm`.
SHIM_DIR = str(Path(__file__).parent / "_shim")


def _intermediate_packages(table: dict[str, str]) -> set[str]:
    """Every proper prefix of a table path that the table itself does not map."""
    prefixes: set[str] = set()
    for path in table:
        parts = path.split(".")
        for i in range(2, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in table:
                prefixes.add(prefix)
    return prefixes


class SurfaceError(ModuleNotFoundError):
    """A `vllm.*` import that the mounted reference engine does not answer."""


def _outside_surface(name: str) -> SurfaceError:
    return SurfaceError(
        f"No module named {name!r} in the reference engine: {name!r} is outside the "
        "reference's plugin surface (the vllm.* paths listed in reference.surface.SURFACE). "
        "A plugin that needs it cannot be checked on the embedded reference engine; run the "
        "check against the real vLLM with `--engine vllm`.",
        name=name,
    )


def _removed(name: str) -> ModuleNotFoundError | None:
    """The error importing `name` raises under the modelled contract, if that release deleted
    it: vLLM's own wording, since the module is simply absent there."""
    from reference._version import contract_at_least

    removed_in = REMOVED_IN.get(name)
    if removed_in is None or not contract_at_least(removed_in):
        return None
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


class _Facade(types.ModuleType):
    """The `vllm` package itself: an empty package whose attributes come from `reference`."""

    def __getattr__(self, name: str) -> Any:
        if name in ("__version__", "__version_tuple__"):
            # Read on each access: the contract modelled comes from the environment.
            from reference import _version

            return getattr(_version, name)
        if name.startswith("__"):
            raise AttributeError(name)
        import reference

        return getattr(reference, name)

    def __dir__(self) -> list[str]:
        import reference

        return sorted(set(super().__dir__()) | set(dir(reference)))


class _SurfaceLoader(importlib.abc.Loader):
    def __init__(self, finder: SurfaceFinder) -> None:
        self._finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._finder.module_for(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module was executed when its reference twin was imported."""


class SurfaceFinder(importlib.abc.MetaPathFinder):
    """Answers every `vllm` and `vllm.*` import from the table, before any other finder."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = dict(table)
        self.packages = _intermediate_packages(self.table)
        self._has_children = {path.rsplit(".", 1)[0] for path in self.table}
        self._synthetic: dict[str, types.ModuleType] = {}
        self._loader = _SurfaceLoader(self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _FACADE_NAME and not fullname.startswith(_FACADE_NAME + "."):
            return None
        removed = _removed(fullname)
        if removed is not None:
            raise removed
        if fullname != _FACADE_NAME and fullname not in self.table:
            if fullname not in self.packages:
                raise _outside_surface(fullname)
        is_package = fullname == _FACADE_NAME or fullname in self.packages
        is_package = is_package or fullname in self._has_children
        return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=is_package)

    def find_distributions(self, context: Any) -> Any:
        """`importlib.metadata` asks every meta-path finder too: while the reference is
        mounted, the `vllm` distribution is the reference's (`reference.distribution`)."""
        from reference.distribution import find_distributions

        return find_distributions(context)

    def module_for(self, name: str) -> types.ModuleType:
        if name in self.table:
            module = importlib.import_module(self.table[name])
            if name in self._has_children and not hasattr(module, "__path__"):
                # A module that the table maps children under must look like a package.
                module.__path__ = []
            return module
        if name not in self._synthetic:
            module_cls = _Facade if name == _FACADE_NAME else types.ModuleType
            module = module_cls(name, "Part of vLLM's layout answered by the reference engine.")
            module.__path__ = []
            self._synthetic[name] = module
        return self._synthetic[name]


def _installed_finder() -> SurfaceFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, SurfaceFinder)), None)


def is_mounted() -> bool:
    """Whether this process answers `import vllm` with the reference engine."""
    return _installed_finder() is not None


def mount() -> None:
    """Make `import vllm...` answer with the reference engine in this process (idempotent).

    Raises RuntimeError if a real vLLM was already imported here: the two cannot share a
    process; ValueError if the environment names a contract the reference does not model.
    """
    from reference._version import contract_version

    contract_version()  # an unsupported contract is an error before anything imports vllm
    if is_mounted():
        return
    already = sys.modules.get(_FACADE_NAME)
    if already is not None and not getattr(already, "__reference_shim__", False):
        raise RuntimeError(
            "Cannot mount the reference engine as `vllm`: a real vLLM "
            f"({getattr(already, '__file__', '?')}) is already imported in this process. "
            "Mount before anything imports vllm, or use `--engine vllm`."
        )
    sys.modules.pop(_FACADE_NAME, None)
    sys.meta_path.insert(0, SurfaceFinder(SURFACE))
    if SHIM_DIR not in sys.path:
        # First, so that in a spawned child the shim wins over a real vLLM installed there.
        sys.path.insert(0, SHIM_DIR)


def unmount() -> None:
    """Undo `mount()`: forget the finder and every `vllm` module it answered."""
    finder = _installed_finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == _FACADE_NAME or n.startswith(_FACADE_NAME + ".")]:
        del sys.modules[name]
    while SHIM_DIR in sys.path:
        sys.path.remove(SHIM_DIR)
