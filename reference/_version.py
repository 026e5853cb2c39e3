"""Versions of the reference engine: the harness release and the vLLM contract it models.

The reference models one of several releases of vLLM's plugin contract (`SUPPORTED_CONTRACTS`)
where their behaviour differs; which one is read from the environment variable
`CONTRACT_ENV` on every use, so a probe process (or a test) can choose it, and the newest is
the default. `CONTRACT_VERSION` and `__version__` are computed on access for the same reason:
`vllm.__version__` reads e.g. `0.34.0+reference.0.1.0`.
"""

from __future__ import annotations

import os
import re

HARNESS_VERSION = "0.1.0"
#: The contract releases whose differing behaviours the reference models, oldest first.
SUPPORTED_CONTRACTS = ("0.32.0", "0.33.0", "0.34.0")
DEFAULT_CONTRACT = SUPPORTED_CONTRACTS[-1]
#: The environment variable that chooses the contract (set by the probe runner from the
#: session's `--contract`). It is deliberately not a `VLLM_*` name: vLLM would call that an
#: unknown variable, and probes drop inherited `VLLM_*` variables.
CONTRACT_ENV = "CONFORMANCE_REFERENCE_CONTRACT"


def _release(version: str) -> tuple[int, int, int]:
    """(major, minor, micro) of a version such as "0.34.0", "0.34" or "0.34.0rc1+local"."""
    pieces = [re.match(r"\d*", piece).group() for piece in version.split("+")[0].split(".")]
    numbers = [int(piece or 0) for piece in pieces[:3]] + [0, 0, 0]
    return numbers[0], numbers[1], numbers[2]


def contract_version() -> str:
    """The contract the reference models in this process (`CONTRACT_ENV`, else the newest).

    Raises ValueError naming the variable and the supported versions for any other value.
    """
    value = os.environ.get(CONTRACT_ENV, "").strip()
    if not value:
        return DEFAULT_CONTRACT
    if value not in SUPPORTED_CONTRACTS:
        raise ValueError(
            f"{CONTRACT_ENV}={value!r} is not a contract the reference engine models; "
            f"supported: {', '.join(SUPPORTED_CONTRACTS)} (unset: {DEFAULT_CONTRACT})."
        )
    return value


def contract_at_least(version: str) -> bool:
    """Whether the modelled contract is `version` (e.g. "0.34.0") or newer."""
    return _release(contract_version()) >= _release(version)


def modelled_contract(judged: str) -> str:
    """The supported contract that models a judged version (`--contract`): the newest one not
    after it, or the oldest for a version before them all (the reference then behaves as its
    oldest release, as it always did)."""
    wanted = _release(judged)
    fitting = [v for v in SUPPORTED_CONTRACTS if _release(v) <= wanted]
    return fitting[-1] if fitting else SUPPORTED_CONTRACTS[0]


def __getattr__(name: str) -> str:
    if name == "CONTRACT_VERSION":
        return contract_version()
    if name == "__version__":
        # The contract, with a local label so that no one mistakes it for a real vLLM build.
        return f"{contract_version()}+reference.{HARNESS_VERSION}"
    if name == "__version_tuple__":
        # As setuptools-scm writes it for vLLM: the release's numbers, then the local label.
        return (*_release(contract_version()), f"reference.{HARNESS_VERSION}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
