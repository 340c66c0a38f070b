"""Training and evaluation jobs for RelayLLM Studio. Each job module's docstring shows how to run it."""
