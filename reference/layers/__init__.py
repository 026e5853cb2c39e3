"""Model-building layers plugins subclass or compose (`vllm.model_executor.layers.*`): linear
and embedding layers of one tensor-parallel rank, the logits head, quantization-method
registration, and the Mamba state calculators."""
