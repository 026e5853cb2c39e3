"""`ModelRegistry`: architecture names (`config.json`'s `architectures`) → model classes.

Importing this module imports no torch: built-ins and `"module:Class"` registrations are
stored as strings and imported only when an engine resolves them (vLLM 0.32, contract §10).

The built-ins are every architecture vLLM ships at the modelled contract release, by name
(`data/builtin_architectures.json`, recorded from vLLM's own registry by
`benchmarks/builtin_architectures.py`), so that a plugin sees the names it tests for or
replaces. The reference's own stand-ins serve the few it can run; every other one points at
vLLM's module and fails to resolve here with the ImportError vLLM's module path gives.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Set
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from reference._version import contract_version
from reference.logger import init_logger

logger = init_logger("vllm.model_executor.models.registry")


@dataclass(frozen=True)
class _ModelInfo:
    """What the engine needs to know about a model class before building it."""

    is_text_generation_model: bool
    is_pooling_model: bool

    @staticmethod
    def from_model_cls(model_cls: type) -> _ModelInfo:
        is_pooling = bool(getattr(model_cls, "is_pooling_model", False))
        generates = not is_pooling and callable(getattr(model_cls, "compute_logits", None))
        return _ModelInfo(is_text_generation_model=generates, is_pooling_model=is_pooling)


class _BaseRegisteredModel:
    def inspect_model_cls(self) -> _ModelInfo:
        raise NotImplementedError

    def load_model_cls(self) -> type:
        raise NotImplementedError


@dataclass(frozen=True)
class _RegisteredModel(_BaseRegisteredModel):
    """A class registered directly; it is inspected at registration, as in vLLM."""

    interfaces: _ModelInfo
    model_cls: type

    @staticmethod
    def from_model_cls(model_cls: type) -> _RegisteredModel:
        return _RegisteredModel(_ModelInfo.from_model_cls(model_cls), model_cls)

    def inspect_model_cls(self) -> _ModelInfo:
        return self.interfaces

    def load_model_cls(self) -> type:
        return self.model_cls


@dataclass(frozen=True)
class _LazyRegisteredModel(_BaseRegisteredModel):
    """A `module:Class` registration: nothing is imported until the class is needed.

    `known_info` lets built-ins answer `is_pooling_model` without importing torch.
    """

    module_name: str
    class_name: str
    known_info: _ModelInfo | None = None

    def inspect_model_cls(self) -> _ModelInfo:
        # vLLM inspects out-of-tree classes in a subprocess; the reference imports them here.
        if self.known_info is not None:
            return self.known_info
        return _ModelInfo.from_model_cls(self.load_model_cls())

    def load_model_cls(self) -> type:
        module = importlib.import_module(self.module_name)
        return getattr(module, self.class_name)


@dataclass(frozen=True)
class _VllmBuiltinModel(_LazyRegisteredModel):
    """One of vLLM's built-in architectures that the reference does not stand in for.

    Resolving it imports vLLM's module path. Where the reference does not answer that module,
    the import raises ModuleNotFoundError naming it; where it answers the module but lacks the
    class (vLLM's `llama` module has classes the reference's lacks), the ImportError that
    `from module import Class` raises. Either way the failure names what vLLM has and the
    reference lacks, so the harness can tell it from a plugin's own failure. An alias of a
    class the mounted reference has (vLLM's `LLaMAForCausalLM` is `llama:LlamaForCausalLM`)
    resolves to it.
    """

    def load_model_cls(self) -> type:
        module = importlib.import_module(self.module_name)
        try:
            return getattr(module, self.class_name)
        except AttributeError as exc:
            raise ImportError(
                f"cannot import name {self.class_name!r} from {self.module_name!r}",
                name=self.module_name,
            ) from exc


@lru_cache(maxsize=128)
def _try_load_model_cls(
    model_arch: str, model: _BaseRegisteredModel
) -> tuple[type | None, BaseException | None]:
    from reference.platforms import current_platform

    current_platform.verify_model_arch(model_arch)
    try:
        return model.load_model_cls(), None
    except Exception as exc:
        logger.exception("Error in loading model architecture '%s'", model_arch)
        return None, exc


@lru_cache(maxsize=128)
def _try_inspect_model_cls(
    model_arch: str, model: _BaseRegisteredModel
) -> tuple[_ModelInfo | None, BaseException | None]:
    try:
        return model.inspect_model_cls(), None
    except Exception as exc:
        logger.exception("Error in inspecting model architecture '%s'", model_arch)
        return None, exc


def _is_torch_module_class(obj: Any) -> bool:
    if not isinstance(obj, type):
        return False
    # A subclass of nn.Module can only exist once torch is imported, so never import it here.
    torch = sys.modules.get("torch")
    return torch is not None and issubclass(obj, torch.nn.Module)


def _normalize_archs(architectures: str | list[str]) -> list[str]:
    if isinstance(architectures, str):
        architectures = [architectures]
    if not architectures:
        raise ValueError(
            "No model architectures are specified; the checkpoint's config.json needs an "
            '`architectures` list such as ["LlamaForCausalLM"].'
        )
    return list(architectures)


@dataclass
class _ModelRegistry:
    """Keyed by architecture name; values say how to get (and describe) the model class."""

    models: dict[str, _BaseRegisteredModel] = field(default_factory=dict)

    def get_supported_archs(self) -> Set[str]:
        """A live view: it reflects registrations made after it was taken."""
        return self.models.keys()

    def register_model(self, model_arch: str, model_cls: type | str) -> None:
        """Register `model_cls` for `model_arch`, replacing any earlier registration.

        `model_cls` is an `nn.Module` subclass, or a `"module:Class"` string that is
        imported only when the architecture is resolved (which keeps torch and CUDA out
        of processes that only register).
        """
        if not isinstance(model_arch, str):
            raise TypeError(f"`model_arch` should be a string, not a {type(model_arch)}")

        if model_arch in self.models:
            logger.debug(
                "Model architecture %s is already registered, and will be "
                "overwritten by the new model class %s.",
                model_arch,
                model_cls,
            )

        model: _BaseRegisteredModel
        if isinstance(model_cls, str):
            split_str = model_cls.split(":")
            if len(split_str) != 2:
                raise ValueError("Expected a string in the format `<module>:<class>`")
            model = _LazyRegisteredModel(*split_str)
        elif _is_torch_module_class(model_cls):
            model = _RegisteredModel.from_model_cls(model_cls)
        else:
            raise TypeError(
                f"`model_cls` should be a string or PyTorch model class, not a {type(model_cls)}"
            )
        self.models[model_arch] = model

    def _raise_for_unsupported(
        self, architectures: list[str], cause: BaseException | None = None
    ) -> None:
        supported = self.get_supported_archs()
        if any(arch in supported for arch in architectures):
            raise ValueError(
                f"Model architectures {architectures} failed "
                "to be inspected. Please check the logs for more details."
            ) from cause
        raise ValueError(
            f"Model architectures {architectures} are not supported for now. "
            f"Supported architectures: {supported}"
        )

    def resolve_model_cls(
        self, architectures: str | list[str], model_config: Any = None
    ) -> tuple[type, str]:
        """The class for the first of `architectures` that loads, and that architecture.

        An unknown architecture raises ValueError listing the supported ones; a registered
        one whose import fails is logged with its traceback and raises ValueError (its
        `__cause__` is the import error).
        """
        archs = _normalize_archs(architectures)
        cause = None
        for arch in archs:
            if arch not in self.models:
                continue
            model_cls, error = _try_load_model_cls(arch, self.models[arch])
            if model_cls is not None:
                return model_cls, arch
            cause = cause or error
        self._raise_for_unsupported(archs, cause)
        raise AssertionError("unreachable")

    def load_model_cls(self, model_arch: str) -> type:
        """The class registered for one architecture (see `resolve_model_cls`)."""
        return self.resolve_model_cls(model_arch)[0]

    def inspect_model_cls(
        self, architectures: str | list[str], model_config: Any = None
    ) -> tuple[_ModelInfo, str]:
        """What the first inspectable architecture is, without building the model."""
        archs = _normalize_archs(architectures)
        cause = None
        for arch in archs:
            if arch not in self.models:
                continue
            info, error = _try_inspect_model_cls(arch, self.models[arch])
            if info is not None:
                return info, arch
            cause = cause or error
        self._raise_for_unsupported(archs, cause)
        raise AssertionError("unreachable")

    def is_text_generation_model(
        self, architectures: str | list[str], model_config: Any = None
    ) -> bool:
        return self.inspect_model_cls(architectures, model_config)[0].is_text_generation_model

    def is_pooling_model(self, architectures: str | list[str], model_config: Any = None) -> bool:
        return self.inspect_model_cls(architectures, model_config)[0].is_pooling_model


_GENERATES = _ModelInfo(is_text_generation_model=True, is_pooling_model=False)
_POOLS = _ModelInfo(is_text_generation_model=False, is_pooling_model=True)

#: Built-in architectures: name → (module under `reference.models`, class, what it is).
_REFERENCE_MODELS: dict[str, tuple[str, str, _ModelInfo]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM", _GENERATES),
    "OPTForCausalLM": ("opt", "OPTForCausalLM", _GENERATES),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel", _GENERATES),
    # vLLM serves a bare `LlamaModel` checkpoint as an embedding model (an adapted
    # `LlamaForCausalLM`); the class `llama.LlamaModel` is the backbone, as in vLLM.
    "LlamaModel": ("llama", "LlamaEmbeddingModel", _POOLS),
}


#: vLLM's built-in architectures per release, in the package data (see the module docstring).
_VLLM_ARCHITECTURES_FILE = ("data", "builtin_architectures.json")


@cache
def _recorded_releases() -> dict[str, dict[str, str]]:
    path = resources.files("reference").joinpath(*_VLLM_ARCHITECTURES_FILE)
    return json.loads(path.read_text(encoding="utf-8"))["releases"]


def vllm_builtin_architectures(release: str) -> dict[str, str]:
    """vLLM's built-in architectures at `release` (e.g. "0.32.0"): architecture →
    `module:Class` in vLLM. Empty for a release that was not recorded."""
    return dict(_recorded_releases().get(release, {}))


def builtin_models(contract: str | None = None) -> dict[str, _BaseRegisteredModel]:
    """A fresh copy of the built-in registrations (all lazy) at `contract` (default: the
    modelled one): vLLM's architecture names of that release, each served by the reference's
    stand-in where it has one, else pointing at vLLM's own module."""
    models: dict[str, _BaseRegisteredModel] = {}
    for arch, target in vllm_builtin_architectures(contract or contract_version()).items():
        module, _, class_name = target.partition(":")
        models[arch] = _VllmBuiltinModel(module, class_name)
    models.update(
        (arch, _LazyRegisteredModel(f"reference.models.{module}", cls_name, info))
        for arch, (module, cls_name, info) in _REFERENCE_MODELS.items()
    )
    return models


ModelRegistry = _ModelRegistry(builtin_models())
