"""Flower ServerApp and ClientApp of medflower (thin Message <-> Python handlers)."""
