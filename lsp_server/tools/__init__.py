"""Offline tools that share the server's code: the FIM training-set builder (fim_dataset)."""
