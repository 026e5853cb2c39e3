"""CustomOp (contract §11): registration, out-of-tree replacement, enabling, dispatch, layers."""

from __future__ import annotations

import logging
import math

import pytest

torch = pytest.importorskip("torch")

import reference.platforms as platforms  # noqa: E402
from conformance.probe import run_probe  # noqa: E402
from reference.config import CompilationConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from reference.ops import custom_op  # noqa: E402
from reference.ops.activation import SiluAndMul  # noqa: E402
from reference.ops.custom_op import CustomOp, PluggableLayer, maybe_get_oot_by_class  # noqa: E402
from reference.ops.layernorm import RMSNorm  # noqa: E402
from reference.ops.rotary_embedding import RotaryEmbedding  # noqa: E402
from reference.platforms.interface import Platform, PlatformEnum  # noqa: E402
from tests.conftest import code  # noqa: E402


@pytest.fixture(autouse=True)
def registries():
    """Tests register ops freely; the process-wide registries are restored afterwards."""
    tables = (custom_op.op_registry, custom_op.op_registry_oot)
    saved = [dict(table) for table in tables]
    yield
    for registry, before in zip(tables, saved, strict=True):
        registry.clear()
        registry.update(before)


@pytest.fixture
def records():
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger("vllm.model_executor.custom_op")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(previous)


def custom_ops(*ops: str):
    """Make a config with `compilation_config.custom_ops = ops` current."""
    config = VllmConfig(compilation_config=CompilationConfig(custom_ops=list(ops)))
    return set_current_vllm_config(config)


def make_op(name: str = "test_op") -> type:
    """A fresh registered op whose forward_* methods say which one ran."""

    @CustomOp.register(name)
    class LabelledOp(CustomOp):
        def forward_native(self):
            return "native"

        def forward_cpu(self):
            return "cpu"

        def forward_cuda(self):
            return "cuda"

        def forward_oot(self):
            return "oot"

    return LabelledOp


# --- registration ----------------------------------------------------------------------------


def test_register_sets_the_name_and_fills_the_registry():
    op_cls = make_op("my_op")
    assert op_cls.name == "my_op"
    assert custom_op.op_registry["my_op"] is op_cls
    assert CustomOp.op_registry is custom_op.op_registry, "one registry, two spellings"


def test_registering_a_taken_op_name_raises():
    make_op("taken")
    with pytest.raises(AssertionError, match="^Duplicate op name: taken$"):
        make_op("taken")


def test_the_in_tree_ops_are_registered_under_vllms_names():
    assert custom_op.op_registry["rotary_embedding"] is RotaryEmbedding
    assert custom_op.op_registry["rms_norm"] is RMSNorm
    assert custom_op.op_registry["silu_and_mul"] is SiluAndMul


def _oot_bare(in_tree):
    @in_tree.register_oot
    class Replacement(in_tree):
        pass

    return Replacement


def _oot_called(in_tree):
    @in_tree.register_oot()
    class Replacement(in_tree):
        pass

    return Replacement


def _oot_by_name(in_tree):
    @CustomOp.register_oot(name=in_tree.__name__)
    class Replacement(in_tree):
        pass

    return Replacement


@pytest.mark.parametrize("form", [_oot_bare, _oot_called, _oot_by_name])
def test_register_oot_replaces_the_in_tree_class_in_every_form(form):
    in_tree = make_op()
    replacement = form(in_tree)
    assert custom_op.op_registry_oot["LabelledOp"] is replacement
    assert replacement.name == "LabelledOp", "the key is the in-tree class name"
    assert type(in_tree()) is replacement


def test_register_oot_twice_for_one_class_raises():
    in_tree = make_op()
    _oot_bare(in_tree)
    with pytest.raises(AssertionError, match="^Duplicate op name: LabelledOp$"):
        _oot_bare(in_tree)


def test_register_oot_on_a_non_class_is_a_type_error():
    with pytest.raises(TypeError, match=r"^Decorator can only be applied to classes\.$"):
        make_op().register_oot(lambda: None)


def test_replacement_is_logged_at_debug(records):
    in_tree = make_op()
    replacement = _oot_bare(in_tree)
    in_tree()
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("DEBUG", f"Instantiating custom op: LabelledOp using {replacement}")
    ]


def test_subclasses_of_a_replaced_op_are_built_as_themselves():
    in_tree = make_op()
    _oot_bare(in_tree)

    class Subclass(in_tree):
        pass

    assert type(Subclass()) is Subclass, "replacement matches the exact class name only"


def test_a_replacement_outside_the_in_tree_hierarchy_is_never_initialised():
    in_tree = make_op()

    @in_tree.register_oot
    class Unrelated(CustomOp):
        def __init__(self):
            super().__init__()
            self.initialised = True

    built = in_tree()
    assert type(built) is Unrelated
    assert "initialised" not in vars(built), "Python skips __init__ for a foreign instance"


def test_maybe_get_oot_by_class_exposes_the_lookup():
    in_tree = make_op()
    assert maybe_get_oot_by_class(in_tree) is in_tree
    replacement = _oot_bare(in_tree)
    assert maybe_get_oot_by_class(in_tree) is replacement


def test_pluggable_layers_share_the_registries_and_name_their_duplicates():
    @PluggableLayer.register("my_layer")
    class Layer(PluggableLayer):
        pass

    @Layer.register_oot
    class PluginLayer(Layer):
        pass

    assert custom_op.op_registry["my_layer"] is Layer
    assert type(Layer()) is PluginLayer
    with pytest.raises(AssertionError, match="^Duplicate layer name: Layer$"):
        Layer.register_oot(type("Again", (Layer,), {}))


# --- enabling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "enabled"),
    [
        ((), True),
        (("all",), True),
        (("none",), False),
        (("none", "+test_op"), True),
        (("all", "-test_op"), False),
        (("-test_op",), False),
        (("none", "+other_op"), False),
    ],
)
def test_enabled_follows_custom_ops(ops, enabled):
    op_cls = make_op()
    with custom_ops(*ops):
        assert op_cls.enabled() is enabled


def test_enabling_and_disabling_one_op_at_once_raises():
    op_cls = make_op()
    with custom_ops("+test_op", "-test_op"), pytest.raises(AssertionError):
        op_cls.enabled()


def test_a_replacement_is_enabled_under_the_in_tree_class_name():
    in_tree = make_op()
    _oot_bare(in_tree)
    with custom_ops("none", "+LabelledOp"):
        assert in_tree()() != "native", "`+LabelledOp` (not `+test_op`) enables the replacement"


def test_an_unregistered_op_follows_the_global_setting():
    class Unregistered(CustomOp):
        pass

    with custom_ops("none"):
        assert Unregistered.enabled() is False
    with custom_ops("all"):
        assert Unregistered.enabled() is True


# --- dispatch --------------------------------------------------------------------------------


class _FakePlatform(Platform):
    device_name = device_type = "cpu"


@pytest.fixture
def on_platform(monkeypatch):
    """Make `current_platform` a platform of the given kind for this test."""

    def use(kind: PlatformEnum) -> None:
        platform = type("P", (_FakePlatform,), {"_enum": kind})()
        monkeypatch.setattr(platforms, "_current_platform", platform)

    return use


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (PlatformEnum.CPU, "cpu"),
        (PlatformEnum.CUDA, "cuda"),
        (PlatformEnum.ROCM, "cuda"),
        (PlatformEnum.OOT, "oot"),
        (PlatformEnum.XPU, "native"),
        (PlatformEnum.TPU, "native"),
    ],
)
def test_an_enabled_op_runs_its_platforms_method(on_platform, kind, expected):
    on_platform(kind)
    op_cls = make_op()
    with custom_ops("all"):
        assert op_cls()() == expected


def test_an_enabled_op_on_this_machine_runs_its_platforms_method():
    expected = "cpu" if platforms.current_platform.is_cpu() else "cuda"
    with custom_ops():
        assert make_op()()() == expected


def test_a_disabled_op_runs_forward_native(on_platform):
    on_platform(PlatformEnum.OOT)
    with custom_ops("none"):
        assert make_op()()() == "native"


def test_enforce_enable_overrides_custom_ops(on_platform):
    on_platform(PlatformEnum.OOT)

    @CustomOp.register("forced")
    class Forced(CustomOp):
        def __init__(self):
            super().__init__(enforce_enable=True)

        def forward_oot(self):
            return "oot"

    with custom_ops("none"):
        assert Forced()() == "oot"


@pytest.mark.parametrize("kind", [PlatformEnum.CPU, PlatformEnum.CUDA, PlatformEnum.OOT])
def test_platform_methods_fall_back_to_forward_native(on_platform, kind):
    on_platform(kind)

    @CustomOp.register("native_only")
    class NativeOnly(CustomOp):
        def forward_native(self):
            return "native"

    with custom_ops("all"):
        assert NativeOnly()() == "native"


# --- in-tree layers ---------------------------------------------------------------------------


def test_rms_norm_matches_its_formula():
    norm = RMSNorm(8, eps=1e-5)
    norm.weight.data = torch.linspace(0.5, 1.5, 8)
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rms_norm_with_a_residual_adds_it_first_and_returns_the_sum():
    norm = RMSNorm(8)
    x, residual = torch.randn(3, 8), torch.randn(3, 8)
    out, new_residual = norm(x, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, norm(x + residual))


def test_silu_and_mul_matches_its_formula():
    x = torch.randn(4, 10)
    gate, up = x[:, :5], x[:, 5:]
    torch.testing.assert_close(SiluAndMul()(x), gate * torch.sigmoid(gate) * up)


def _rope_reference(x, positions, head_size, rotary_dim, base, neox):
    """Rotate each pair (i, partner) of each head by angle position * base^(-2i/rotary_dim)."""
    out = x.clone().reshape(x.shape[0], -1, head_size)
    half = rotary_dim // 2
    for t, pos in enumerate(positions.tolist()):
        for i in range(half):
            angle = pos * base ** (-2 * i / rotary_dim)
            a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
            xa, xb = out[t, :, a].clone(), out[t, :, b].clone()
            out[t, :, a] = xa * math.cos(angle) - xb * math.sin(angle)
            out[t, :, b] = xb * math.cos(angle) + xa * math.sin(angle)
    return out.reshape(x.shape)


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("rotary_dim", [16, 8], ids=["full", "partial"])
def test_rotary_embedding_matches_its_formula(neox, rotary_dim):
    rope = RotaryEmbedding(16, rotary_dim, 32, 10000, neox, torch.float32)
    positions = torch.tensor([0, 3, 17, 31])
    query, key = torch.randn(4, 2 * 16), torch.randn(4, 16)
    q, k = rope(positions, query, key)
    torch.testing.assert_close(q, _rope_reference(query, positions, 16, rotary_dim, 10000, neox))
    torch.testing.assert_close(k, _rope_reference(key, positions, 16, rotary_dim, 10000, neox))


def test_rotary_embedding_leaves_position_zero_unchanged():
    rope = RotaryEmbedding(16, 16, 16, 10000, True, torch.float32)
    query = torch.randn(1, 16)
    torch.testing.assert_close(rope(torch.tensor([0]), query)[0], query)


# --- the dummy platform plugin, in a probe ----------------------------------------------------

DUMMY_PLATFORM_OP = code(
    """
    import torch
    from vllm.plugins import load_general_plugins
    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

    load_general_plugins()
    op = RotaryEmbedding(16, 16, 16, 10000, True, torch.float32)
    probe.result["class"] = type(op).__name__
    probe.result["name"] = type(op).name
    probe.result["addition_config"] = getattr(op, "addition_config", None)
    probe.result["dispatch"] = op._forward_method.__name__
    positions, query, key = torch.arange(3), torch.randn(3, 32), torch.randn(3, 16)
    ran, native = op(positions, query, key), op.forward_native(positions, query, key)
    probe.result["same_as_native"] = all(torch.equal(a, b) for a, b in zip(ran, native))

    import vllm_add_dummy_platform
    vllm_add_dummy_platform.register_ops()
    vllm_add_dummy_platform.register_ops()
    probe.result["register_ops_reentrant"] = True
    """
)


def test_the_dummy_platform_replaces_rotary_embedding_and_runs_forward_oot(overlay):
    overlay.add_fixture("vllm_add_dummy_platform")
    result = run_probe(DUMMY_PLATFORM_OP, overlay=overlay, timeout=120)
    assert result.ok, result.describe()
    assert result.values["class"] == "DummyRotaryEmbedding"
    assert result.values["name"] == "RotaryEmbedding", "register_oot renames the replacement"
    assert result.values["addition_config"] is True, "the replacement's __init__ ran"
    assert result.values["dispatch"] == "forward_oot", "custom_ops=['all'] on an OOT platform"
    assert result.values["same_as_native"] is True
    assert result.values["register_ops_reentrant"] is True
