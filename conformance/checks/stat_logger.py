"""stat_logger checks (being written)."""
