"""Serving LoRA adapters on a reference model: PEFT adapters are loaded into a fixed number of
slots, and each row of a batch picks its own slot (or none) for one forward pass.

How an engine drives it::

    manager = LoRAModelManager(model, max_loras=4, max_lora_rank=16)  # wraps Linear layers once
    slot = manager.activate(lora_request)          # load (or reuse) the adapter; returns its slot
    with manager.batch([slot, None, other_slot]):  # one entry per batch row; None = base model
        hidden = model(input_ids, positions, kv_cache=cache, attention_mask=mask)

This module imports torch only when a manager is built, so importing it stays cheap.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference.lora.request import LoRARequest

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "AdapterConfig",
    "LoRAModelManager",
    "LoRASlot",
    "read_adapter_config",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: PEFT saves weights under the name the wrapped model gave them: `base_model.model.<module>`.
_PEFT_PREFIX = "base_model.model."
_WEIGHT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
#: PEFT's defaults for keys a hand-written adapter_config.json may leave out.
_DEFAULT_R, _DEFAULT_ALPHA = 8, 8


class LoRASlot(int):
    """A slot index (use it as an int) that remembers which adapter it was handed out for, so
    `LoRAModelManager.batch` can refuse a slot whose adapter has since been evicted."""

    lora_int_id: int

    def __new__(cls, slot: int, lora_int_id: int) -> LoRASlot:
        value = super().__new__(cls, slot)
        value.lora_int_id = lora_int_id
        return value

    def __repr__(self) -> str:
        return f"LoRASlot({int(self)}, lora_int_id={self.lora_int_id})"


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a PEFT `adapter_config.json` that change how an adapter is applied."""

    r: int
    lora_alpha: float
    #: Module name suffixes (a list in the file), or one regular expression matched against
    #: whole module names (a string), or PEFT's shorthand "all-linear".
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        # rsLoRA divides by sqrt(r) so that large ranks do not shrink the update.
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _config_error(path: Path, problem: str, fix: str) -> ValueError:
    return ValueError(f"LoRA adapter config {path}: {problem}. {fix}")


def _refuse_unsupported(config: dict[str, Any], path: Path) -> None:
    """Refuse PEFT options that would change the maths this module does not implement."""
    unsupported = {
        "use_dora": "DoRA adapters (use_dora) are not supported",
        "modules_to_save": "modules_to_save (fully trained extra modules) is not supported",
        "rank_pattern": "per-module ranks (rank_pattern) are not supported",
        "alpha_pattern": "per-module alphas (alpha_pattern) are not supported",
        "layer_replication": "layer_replication is not supported",
    }
    for key, problem in unsupported.items():
        if config.get(key):
            raise _config_error(path, f"{problem} ({key}={config[key]!r})", "Retrain or merge it.")
    bias = config.get("bias", "none")
    if bias != "none":
        raise _config_error(
            path,
            f"bias={bias!r} trains the base layers' biases, which are not loaded",
            'Use an adapter trained with bias="none".',
        )


def read_adapter_config(adapter_dir: str | Path, max_lora_rank: int) -> AdapterConfig:
    """Parse and check `adapter_dir/adapter_config.json`; ValueError names the file and the fix."""
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"LoRA adapter config {path} does not exist: lora_path must be the directory "
            f"holding the adapter's {CONFIG_FILE} and {WEIGHTS_FILE} (as PEFT's "
            "save_pretrained writes them)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _config_error(path, f"not valid JSON ({exc})", "Rewrite it with PEFT.") from exc
    if not isinstance(config, dict):
        raise _config_error(path, "the top level is not a JSON object", "Rewrite it with PEFT.")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _config_error(
            path, f"peft_type is {peft_type!r}, not 'LORA'", "Only LoRA adapters can be served."
        )
    r = config.get("r", _DEFAULT_R)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise _config_error(path, f"r must be a positive integer, got {r!r}", "Fix 'r'.")
    if r > max_lora_rank:
        raise _config_error(
            path,
            f"rank r={r} exceeds max_lora_rank={max_lora_rank}",
            f"Start the engine with max_lora_rank >= {r}, or use an adapter of lower rank.",
        )
    alpha = config.get("lora_alpha", _DEFAULT_ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise _config_error(path, f"lora_alpha must be a number, got {alpha!r}", "Fix it.")
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        target_modules: tuple[str, ...] | str = tuple(targets)
    elif isinstance(targets, str) and targets:
        target_modules = targets
    else:
        raise _config_error(
            path,
            f"target_modules must be a non-empty list of module names or a regex, got {targets!r}",
            'Name the layers the adapter trains, e.g. ["q_proj", "v_proj"].',
        )
    _refuse_unsupported(config, path)
    return AdapterConfig(r, float(alpha), target_modules, bool(config.get("use_rslora", False)))


def _matches(target: str, module_name: str) -> bool:
    """PEFT's rule for a listed target: the whole name, or its last dotted components."""
    return module_name == target or module_name.endswith(f".{target}")


@dataclass
class _Adapter:
    """A parsed adapter on the CPU: per wrapped layer, A `[r, in]` and scaled B `[out, r]`."""

    request: LoRARequest
    config: AdapterConfig
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Loaded:
    request: LoRARequest
    slot: int


class _BatchState:
    """What the current forward pass applies, shared by every wrapped layer of one manager.

    `groups` pairs a slot with the batch rows that use it (`None`: every row). `rows` is the
    batch size the engine declared, checked against each layer's input.
    """

    def __init__(self) -> None:
        self.active = False
        self.groups: list[tuple[int, torch.Tensor | None]] = []
        self.rows: int | None = None

    def clear(self) -> None:
        self.active, self.groups, self.rows = False, [], None


def _make_lora_linear() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LoRALinear(nn.Linear):
        """An `nn.Linear` that adds, per batch row, `x @ A.T @ B.T` of the row's adapter slot.

        It shares the wrapped layer's `weight` and `bias` Parameters, so parameter names (and
        checkpoint loading) are unchanged. Adapter weights sit in non-persistent buffers of
        `max_loras` slots, zero-padded to `max_lora_rank`; `ranks[slot]` is 0 where the slot's
        adapter does not train this layer.
        """

        def __init__(
            self, base: nn.Linear, state: _BatchState, max_loras: int, max_rank: int
        ) -> None:
            # nn.Linear.__init__ would allocate a fresh weight; the base layer's is reused.
            nn.Module.__init__(self)
            self.in_features, self.out_features = base.in_features, base.out_features
            self.weight = base.weight
            self.bias = base.bias
            like = {"dtype": base.weight.dtype, "device": base.weight.device}
            a = torch.zeros(max_loras, max_rank, self.in_features, **like)
            b = torch.zeros(max_loras, self.out_features, max_rank, **like)
            self.register_buffer("lora_a", a, persistent=False)
            self.register_buffer("lora_b", b, persistent=False)
            self.ranks = [0] * max_loras
            self._state = state

        def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor) -> None:
            rank = a.shape[0]
            with torch.no_grad():
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()
                self.lora_a[slot, :rank].copy_(a)
                self.lora_b[slot, :, :rank].copy_(b)
            self.ranks[slot] = rank

        def clear_slot(self, slot: int) -> None:
            # The rank alone gates use; zeroing keeps stale weights out of debugging dumps.
            self.ranks[slot] = 0
            with torch.no_grad():
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = F.linear(x, self.weight, self.bias)
            state = self._state
            if not state.groups:
                return out
            self._check_rows(x)
            for slot, rows in state.groups:
                rank = self.ranks[slot]
                if rank == 0:
                    continue
                a, b = self.lora_a[slot, :rank], self.lora_b[slot, :, :rank]
                if rows is None:
                    out = out + F.linear(F.linear(x, a), b)
                else:
                    # Rows without this adapter are left untouched, bit for bit.
                    delta = F.linear(F.linear(x.index_select(0, rows), a), b)
                    out = out.index_add(0, rows, delta)
            return out

        def _check_rows(self, x: torch.Tensor) -> None:
            expected = self._state.rows
            if expected is None:
                return
            per_row = len(self._state.groups) > 1 or self._state.groups[0][1] is not None
            got = x.shape[0] if x.dim() >= 3 else 1
            if got != expected and (per_row or x.dim() >= 3):
                raise ValueError(
                    f"LoRA batch mismatch: manager.batch() was given {expected} row slot(s), "
                    f"but a layer received input of shape {tuple(x.shape)} ({got} row(s)). "
                    "Pass one slot per batch row, or a single slot for the whole input."
                )

    return LoRALinear


_LORA_LINEAR: type | None = None


def _lora_linear_class() -> type:
    global _LORA_LINEAR
    if _LORA_LINEAR is None:
        _LORA_LINEAR = _make_lora_linear()
    return _LORA_LINEAR


def __getattr__(name: str) -> Any:
    # `LoRALinear` subclasses nn.Linear, so it is built (and torch imported) on first use.
    if name == "LoRALinear":
        return _lora_linear_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LoRAModelManager:
    """Applies PEFT LoRA adapters to `model`, up to `max_loras` at once, one per batch row.

    Construction replaces each LoRA-capable `nn.Linear` of `model` by a `LoRALinear` (same
    parameters, same names): by default every Linear except the LM head, or only those whose
    names end in one of `target_modules`. A model can have one manager.

    - `activate(request) -> LoRASlot` loads `request.lora_path` into a free slot (evicting the
      least recently used adapter that is neither pinned nor in the current batch), or returns
      the slot the same `lora_int_id` already holds.
    - `batch(row_slots)` is a context manager that sets the adapter of every batch row for
      the forward passes inside it. `row_slots` has one entry per row of the model's input
      (`[B, T]`); a single entry (not in a list) applies to the whole input, e.g. a flattened
      `[T]` sequence. Entries are slots from `activate`, `LoRARequest`s (activated on the
      spot and kept loaded while the block runs), or `None` for the base model. Outside
      `batch`, the model computes exactly what it computed before wrapping.
    - `remove(lora_int_id) -> bool`, `pin(lora_int_id)`, `list_loras() -> set[int]`,
      `slot_of(lora_int_id)`, `get_request(lora_int_id)`.

    Adapters are identified by `lora_int_id`, as in vLLM. Not thread-safe: one engine loop.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        target_modules: Sequence[str] | None = None,
    ) -> None:
        if isinstance(max_loras, bool) or not isinstance(max_loras, int) or max_loras < 1:
            raise ValueError(f"max_loras must be a positive integer, got {max_loras!r}.")
        if isinstance(max_lora_rank, bool) or not isinstance(max_lora_rank, int):
            raise ValueError(f"max_lora_rank must be a positive integer, got {max_lora_rank!r}.")
        if max_lora_rank < 1:
            raise ValueError(f"max_lora_rank must be a positive integer, got {max_lora_rank!r}.")
        self.model = model
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._state = _BatchState()
        #: Wrapped layers by module name (the names PEFT adapters use for this model).
        self.layers: dict[str, Any] = self._wrap_layers(target_modules)
        first = next(iter(self.layers.values()))
        self._device = first.weight.device
        self._slot_ids: list[int | None] = [None] * max_loras
        #: Loaded adapters, least recently used first.
        self._loaded: OrderedDict[int, _Loaded] = OrderedDict()
        self._pinned: set[int] = set()
        self._in_use: set[int] = set()

    # --- wrapping ---------------------------------------------------------------------------

    def _wrap_layers(self, target_modules: Sequence[str] | None) -> dict[str, Any]:
        from torch import nn

        lora_linear = _lora_linear_class()
        head = getattr(self.model, "lm_head", None)
        chosen: list[tuple[str, nn.Linear]] = []
        for name, module in self.model.named_modules():
            if isinstance(module, lora_linear):
                raise ValueError(
                    f"{type(self.model).__name__}.{name} is already LoRA-wrapped: a model takes "
                    "one LoRAModelManager. Reuse the existing manager."
                )
            if not isinstance(module, nn.Linear) or module is head:
                continue
            if target_modules is None or any(_matches(t, name) for t in target_modules):
                chosen.append((name, module))
        if not chosen:
            wanted = "any nn.Linear" if target_modules is None else list(target_modules)
            raise ValueError(
                f"{type(self.model).__name__} has no LoRA-capable layer matching {wanted}; "
                "LoRA applies to nn.Linear layers other than the LM head."
            )
        layers = {}
        for name, module in chosen:
            wrapped = lora_linear(module, self._state, self.max_loras, self.max_lora_rank)
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, wrapped)
            layers[name] = wrapped
        return layers

    # --- loading ----------------------------------------------------------------------------

    def _layer_name(self, key_module: str) -> str | None:
        """The wrapped layer a PEFT weight name refers to, if any."""
        if key_module in self.layers:
            return key_module
        # Adapters trained on the bare backbone (e.g. `LlamaModel`) omit its prefix.
        prefix = getattr(self.model, "backbone_prefix", None)
        if prefix and f"{prefix}.{key_module}" in self.layers:
            return f"{prefix}.{key_module}"
        return None

    def _check_targets(self, config: AdapterConfig, path: Path) -> None:
        module_names = [name for name, _ in self.model.named_modules()]
        kinds = sorted({name.rpartition(".")[2] for name in self.layers})
        if config.target_modules == "all-linear":
            return  # PEFT's shorthand for every Linear but the output layer: what is wrapped
        if isinstance(config.target_modules, str):
            pattern = re.compile(config.target_modules)
            if not any(pattern.fullmatch(name) for name in self.layers):
                raise _config_error(
                    path,
                    f"target_modules regex {config.target_modules!r} matches no LoRA-capable "
                    f"layer of {type(self.model).__name__}",
                    f"Its LoRA-capable layers are named {kinds}.",
                )
            return
        for target in config.target_modules:
            if any(_matches(target, name) for name in self.layers):
                continue
            exists = any(_matches(target, name) for name in module_names)
            problem = "is not LoRA-capable here" if exists else "does not exist in the model"
            raise _config_error(
                path,
                f"target module {target!r} {problem} ({type(self.model).__name__})",
                f"Use an adapter trained for this model; its LoRA-capable layers are {kinds}.",
            )

    def _read_weights(self, request: LoRARequest, config: AdapterConfig) -> _Adapter:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(request.lora_path) / WEIGHTS_FILE
        if not path.is_file():
            bin_note = ""
            if (path.parent / "adapter_model.bin").is_file():
                bin_note = " (adapter_model.bin is there, but pickled weights are not loaded)"
            raise ValueError(
                f"LoRA adapter weights {path} do not exist{bin_note}. Save the adapter with "
                "PEFT's save_pretrained(..., safe_serialization=True) to write "
                f"{WEIGHTS_FILE}."
            )
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(
                f"LoRA adapter weights {path} cannot be read as safetensors ({exc}). "
                "Re-save the adapter with PEFT."
            ) from exc
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = _WEIGHT_KEY.match(key.removeprefix(_PEFT_PREFIX))
            layer = match and self._layer_name(match["module"])
            if not match or not layer:
                raise ValueError(
                    f"LoRA adapter weights {path}: tensor {key!r} is not a lora_A/lora_B weight "
                    f"of a LoRA-capable layer of {type(self.model).__name__}. Use an adapter "
                    "trained for this model, without embedding or extra-module weights."
                )
            pairs.setdefault(layer, {})[match["which"]] = tensor
        if not pairs:
            raise ValueError(f"LoRA adapter weights {path} hold no tensors. Re-save the adapter.")
        adapter = _Adapter(request, config)
        for layer, ab in sorted(pairs.items()):
            adapter.weights[layer] = self._check_pair(path, layer, ab, config)
        return adapter

    def _check_pair(
        self, path: Path, layer: str, ab: dict[str, torch.Tensor], config: AdapterConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise ValueError(
                f"LoRA adapter weights {path}: {layer} has no {missing}.weight. Re-save the "
                "adapter; every trained layer needs both matrices."
            )
        a, b = ab["A"], ab["B"]
        wrapped = self.layers[layer]
        expected_a = (config.r, wrapped.in_features)
        expected_b = (wrapped.out_features, config.r)
        if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
            raise ValueError(
                f"LoRA adapter weights {path}: {layer} has lora_A {tuple(a.shape)} and lora_B "
                f"{tuple(b.shape)}, expected {expected_a} and {expected_b} (r={config.r} from "
                f"{CONFIG_FILE}). The adapter was trained for another model or its config "
                "does not match its weights."
            )
        # Scaling is folded into B once here, not multiplied in on every forward pass.
        scaled_b = b.float() * config.scaling
        dtype = wrapped.weight.dtype
        return a.to(dtype), scaled_b.to(dtype)

    def _read_adapter(self, request: LoRARequest) -> _Adapter:
        adapter_dir = Path(request.lora_path)
        if not adapter_dir.is_dir():
            raise ValueError(
                f"LoRA adapter {request.lora_name!r}: {adapter_dir} is not a directory. Pass "
                f"lora_path=the directory holding {CONFIG_FILE} and {WEIGHTS_FILE}."
            )
        config = read_adapter_config(adapter_dir, self.max_lora_rank)
        self._check_targets(config, adapter_dir / CONFIG_FILE)
        return self._read_weights(request, config)

    # --- slots ------------------------------------------------------------------------------

    def activate(self, lora_request: LoRARequest) -> LoRASlot:
        """The slot holding `lora_request`'s adapter, loading it first if needed (see class)."""
        lora_id = lora_request.lora_int_id
        loaded = self._loaded.get(lora_id)
        if loaded is not None:
            self._loaded.move_to_end(lora_id)
            return LoRASlot(loaded.slot, lora_id)
        # Read and validate before evicting anything, so a bad adapter costs no loaded one.
        adapter = self._read_adapter(lora_request)
        slot = self._free_slot(lora_request)
        for name, layer in self.layers.items():
            if name in adapter.weights:
                layer.set_slot(slot, *(t.to(self._device) for t in adapter.weights[name]))
            else:
                layer.clear_slot(slot)
        self._slot_ids[slot] = lora_id
        self._loaded[lora_id] = _Loaded(lora_request, slot)
        return LoRASlot(slot, lora_id)

    def _free_slot(self, incoming: LoRARequest) -> int:
        if None in self._slot_ids:
            return self._slot_ids.index(None)
        for lora_id in self._loaded:  # least recently used first
            if lora_id not in self._pinned and lora_id not in self._in_use:
                slot = self._loaded[lora_id].slot
                self._evict(lora_id)
                return slot
        raise RuntimeError(
            f"Cannot load LoRA adapter {incoming.lora_name!r}: all max_loras={self.max_loras} "
            f"slots hold adapters that are pinned or used by the current batch "
            f"(lora_int_ids {sorted(self._loaded)}). Raise max_loras, unpin an adapter, or "
            "schedule fewer distinct adapters per batch."
        )

    def _evict(self, lora_id: int) -> None:
        loaded = self._loaded.pop(lora_id)
        for layer in self.layers.values():
            layer.clear_slot(loaded.slot)
        self._slot_ids[loaded.slot] = None
        self._pinned.discard(lora_id)

    def remove(self, lora_int_id: int) -> bool:
        """Unload an adapter; False if it was not loaded. Not allowed while a batch uses it."""
        if lora_int_id not in self._loaded:
            return False
        if lora_int_id in self._in_use:
            raise RuntimeError(
                f"LoRA adapter {lora_int_id} is used by the batch being run; remove it after "
                "the `with manager.batch(...)` block ends."
            )
        self._evict(lora_int_id)
        return True

    def pin(self, lora_int_id: int) -> None:
        """Keep a loaded adapter out of LRU eviction until it is removed."""
        if lora_int_id not in self._loaded:
            raise ValueError(
                f"LoRA adapter {lora_int_id} is not loaded; activate its request before pinning."
            )
        self._pinned.add(lora_int_id)

    def list_loras(self) -> set[int]:
        """`lora_int_id`s of the loaded adapters."""
        return set(self._loaded)

    def slot_of(self, lora_int_id: int) -> LoRASlot | None:
        loaded = self._loaded.get(lora_int_id)
        return None if loaded is None else LoRASlot(loaded.slot, lora_int_id)

    def get_request(self, lora_int_id: int) -> LoRARequest | None:
        loaded = self._loaded.get(lora_int_id)
        return None if loaded is None else loaded.request

    # --- batches ----------------------------------------------------------------------------

    @contextmanager
    def batch(
        self, row_slots: Sequence[int | LoRARequest | None] | int | LoRARequest | None
    ) -> Iterator[None]:
        """Apply one adapter per batch row (see the class docstring) inside the block."""
        if self._state.active:
            raise RuntimeError(
                "manager.batch() blocks do not nest: finish the current forward pass first."
            )
        single = row_slots is None or isinstance(row_slots, (int, LoRARequest))
        entries = [row_slots] if single else list(row_slots)  # type: ignore[arg-type]
        if not entries:
            raise ValueError("manager.batch() needs one slot (or None) per batch row, got none.")
        self._state.active = True
        try:
            slots = [self._resolve(entry) for entry in entries]
            self._set_groups(slots, None if single else len(slots))
            yield
        finally:
            self._state.clear()
            self._in_use.clear()

    def _resolve(self, entry: int | LoRARequest | None) -> int | None:
        """A batch entry as a slot index, marking its adapter as in use (so not evictable)."""
        if entry is None:
            return None
        if isinstance(entry, LoRARequest):
            slot = self.activate(entry)
            self._in_use.add(entry.lora_int_id)
            return int(slot)
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise TypeError(
                f"Batch row slots must be slots from activate(), LoRARequests or None; "
                f"got {entry!r}."
            )
        if not 0 <= entry < self.max_loras or self._slot_ids[entry] is None:
            raise ValueError(
                f"LoRA slot {entry!r} holds no adapter (max_loras={self.max_loras}, loaded "
                f"lora_int_ids {sorted(self._loaded)}). Pass the slot activate() returned."
            )
        holder = self._slot_ids[entry]
        if isinstance(entry, LoRASlot) and holder != entry.lora_int_id:
            raise RuntimeError(
                f"LoRA adapter {entry.lora_int_id} was evicted from slot {int(entry)} after "
                f"activate() returned it (the slot now holds adapter {holder}): more distinct "
                f"adapters were activated than max_loras={self.max_loras}. Activate at most "
                "max_loras adapters per batch, or pass LoRARequests to batch()."
            )
        assert holder is not None
        self._in_use.add(holder)
        self._loaded.move_to_end(holder)
        return int(entry)

    def _set_groups(self, slots: list[int | None], rows: int | None) -> None:
        import torch

        distinct = {s for s in slots if s is not None}
        groups: list[tuple[int, torch.Tensor | None]] = []
        if len(distinct) == 1 and None not in slots:
            # One adapter for everything: no row gathering needed.
            groups.append((next(iter(distinct)), None))
        else:
            for slot in sorted(distinct):
                index = [i for i, s in enumerate(slots) if s == slot]
                groups.append((slot, torch.tensor(index, dtype=torch.long, device=self._device)))
        self._state.groups = groups
        self._state.rows = rows
