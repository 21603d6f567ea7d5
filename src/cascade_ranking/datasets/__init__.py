"""Dataset builders: turn sources (logs, published datasets, simulations) into the request-list store."""

__all__: list[str] = []
