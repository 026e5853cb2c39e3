"""lora_resolver checks (being written)."""
