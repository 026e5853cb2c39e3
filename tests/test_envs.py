"""`reference.envs` parses the VLLM_* variables exactly as vLLM 0.32 does."""

from __future__ import annotations

import pytest

from reference import envs
from reference._version import CONTRACT_ENV


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a", ["a"]),
        ("", [""]),
        ("a, b", ["a", " b"]),
        ("b,,", ["b", "", ""]),
        ("a,", ["a", ""]),
        (" A ", [" A "]),
    ],
)
def test_vllm_plugins_is_split_on_commas_without_stripping(monkeypatch, raw, expected):
    monkeypatch.setenv("VLLM_PLUGINS", raw)
    assert envs.VLLM_PLUGINS == expected


def test_vllm_plugins_unset_is_none(monkeypatch):
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    assert envs.VLLM_PLUGINS is None


def test_values_are_reread_on_each_access(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "a")
    first = envs.VLLM_PLUGINS
    monkeypatch.setenv("VLLM_PLUGINS", "b")
    assert (first, envs.VLLM_PLUGINS) == (["a"], ["b"])


def test_enable_envs_cache_freezes_values(monkeypatch):
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    envs.enable_envs_cache()
    try:
        assert envs.VLLM_TARGET_DEVICE == "cpu"
        monkeypatch.setenv("VLLM_TARGET_DEVICE", "cuda")
        assert envs.VLLM_TARGET_DEVICE == "cpu", "a cached value must ignore later changes"
    finally:
        envs.disable_envs_cache()
    assert envs.VLLM_TARGET_DEVICE == "cuda"


@pytest.mark.parametrize(("raw", "expected"), [(None, "cuda"), ("CPU", "cpu"), ("cuda", "cuda")])
def test_target_device_defaults_to_cuda_and_is_lowercased(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("VLLM_TARGET_DEVICE", raising=False)
    else:
        monkeypatch.setenv("VLLM_TARGET_DEVICE", raw)
    assert envs.VLLM_TARGET_DEVICE == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, False), ("1", True), (" TRUE ", True), ("true", True), ("0", False), ("yes", False)],
)
def test_allow_runtime_lora_updating_accepts_1_and_true(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    else:
        monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raw)
    assert envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING is expected


@pytest.mark.parametrize("contract", ["0.32.0", "0.33.0"])
@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("1", True), ("0", False)])
def test_use_v2_model_runner_is_an_optional_bool_up_to_0_33(monkeypatch, contract, raw, expected):
    monkeypatch.setenv(CONTRACT_ENV, contract)
    if raw is None:
        monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    else:
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", raw)
    assert envs.VLLM_USE_V2_MODEL_RUNNER is expected
    assert "VLLM_USE_V2_MODEL_RUNNER" in dir(envs)


@pytest.mark.parametrize("raw", [None, "1"])
def test_use_v2_model_runner_is_gone_from_0_34(monkeypatch, raw):
    monkeypatch.setenv(CONTRACT_ENV, "0.34.0")
    if raw is None:
        monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    else:
        monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", raw)
    with pytest.raises(AttributeError, match="VLLM_USE_V2_MODEL_RUNNER"):
        envs.VLLM_USE_V2_MODEL_RUNNER  # noqa: B018
    assert "VLLM_USE_V2_MODEL_RUNNER" not in dir(envs)
    with pytest.raises(ValueError, match="Unknown vLLM environment variable"):
        envs.is_set("VLLM_USE_V2_MODEL_RUNNER")


def test_removed_environment_variables_exist_from_0_34(monkeypatch):
    monkeypatch.setenv(CONTRACT_ENV, "0.33.0")
    assert not hasattr(envs, "removed_environment_variables")
    monkeypatch.setenv(CONTRACT_ENV, "0.34.0")
    assert list(envs.removed_environment_variables) == ["VLLM_MARLIN_INPUT_DTYPE"]


def test_logging_level_defaults_to_info_upper(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    assert envs.VLLM_LOGGING_LEVEL == "INFO"
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "debug")
    assert envs.VLLM_LOGGING_LEVEL == "DEBUG"


def test_lora_cache_dir_is_the_raw_string(monkeypatch):
    monkeypatch.delenv("VLLM_LORA_RESOLVER_CACHE_DIR", raising=False)
    assert envs.VLLM_LORA_RESOLVER_CACHE_DIR is None
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", " /x ")
    assert envs.VLLM_LORA_RESOLVER_CACHE_DIR == " /x "


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError):
        envs.VLLM_NOT_A_VARIABLE  # noqa: B018
