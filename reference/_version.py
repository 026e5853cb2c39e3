"""Versions of the reference engine: the harness release and the vLLM contract it mirrors."""

HARNESS_VERSION = "0.1.0"
CONTRACT_VERSION = "0.32.0"
# What `vllm.__version__` reads when the reference is mounted: the contract it implements,
# with a local label so that no one mistakes it for a real vLLM build.
__version__ = f"{CONTRACT_VERSION}+reference.{HARNESS_VERSION}"
