"""io_processor checks (being written)."""
