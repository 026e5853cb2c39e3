"""GPT-2 as a generating model."""

from __future__ import annotations

from reference.models.hf import HfForCausalLM


class GPT2LMHeadModel(HfForCausalLM):
    hf_model_class = "GPT2LMHeadModel"
    hf_config_class = "GPT2Config"
