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


def test_a_logging_config_file_replaces_the_default_config(tmp_path):
    # Real plugins read vllm.envs.VLLM_LOGGING_CONFIG_PATH (sendnn-inference, vllm-spyre-next).
    import json
    import subprocess
    import sys

    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "FROM-FILE %(name)s %(message)s"}},
        "handlers": {
            "out": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {"vllm": {"handlers": ["out"], "level": "INFO", "propagate": False}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    code = (
        "from reference import envs\n"
        "from reference.logger import init_logger\n"
        "assert envs.VLLM_CONFIGURE_LOGGING is True, envs.VLLM_CONFIGURE_LOGGING\n"
        "init_logger('vllm.test').info('hello')\n"
    )
    run = dict(capture_output=True, text=True, timeout=60)
    env = {"PATH": "/usr/bin:/bin", "VLLM_LOGGING_CONFIG_PATH": str(path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, **run)
    assert done.returncode == 0, done.stderr
    assert "FROM-FILE vllm.test hello" in done.stdout
    both = {**env, "VLLM_CONFIGURE_LOGGING": "0"}
    refused = subprocess.run([sys.executable, "-c", "import reference.logger"], env=both, **run)
    assert refused.returncode != 0 and "VLLM_LOGGING_CONFIG_PATH" in refused.stderr


def test_plugins_can_extend_the_default_logging_config():
    # sendnn-inference and vllm-spyre-next copy vllm.logger.DEFAULT_LOGGING_CONFIG's vllm
    # formatter, handler and logger for their own logger and apply it with dictConfig.
    import subprocess
    import sys

    code = (
        "import copy, logging, logging.config\n"
        "from reference.logger import DEFAULT_LOGGING_CONFIG, logger\n"
        "config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)\n"
        "config['formatters']['mine'] = config['formatters']['vllm']\n"
        "config['handlers']['mine'] = {**config['handlers']['vllm'], 'formatter': 'mine'}\n"
        "config['loggers']['mine'] = {**config['loggers']['vllm'], 'handlers': ['mine']}\n"
        "logging.config.dictConfig(config)\n"
        "logging.getLogger('mine').warning('one\\ntwo')\n"
        "assert logger.name == 'vllm.logger'\n"
    )
    run = dict(capture_output=True, text=True, timeout=60)
    done = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"}, **run)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith("WARNING ") and first.endswith("] one"), first
    assert second.strip().startswith("WARNING ") and second.endswith("] two"), second
