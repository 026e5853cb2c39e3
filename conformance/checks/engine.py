"""engine checks (being written)."""
