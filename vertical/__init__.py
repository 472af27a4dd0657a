"""Vertical federated learning: PSI patient alignment and split-model training."""
