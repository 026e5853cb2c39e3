"""LoRA adapters as plugins see them: requests, the resolver registry and the filesystem resolver.

Nothing is imported here, so `import reference.lora.resolver` stays cheap and torch-free.
"""
