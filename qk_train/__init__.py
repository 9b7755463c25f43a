"""query-kontext training side: data, models, training loop and evaluation (torch lives here)."""
