"""logits checks (being written)."""
