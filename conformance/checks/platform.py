"""platform checks (being written)."""
