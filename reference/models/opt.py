"""OPT as a generating model."""

from __future__ import annotations

from reference.models.hf import HfForCausalLM


class OPTForCausalLM(HfForCausalLM):
    hf_model_class = "OPTForCausalLM"
    hf_config_class = "OPTConfig"
