"""Command-line tools: ``medflower simulate | evaluate`` and helpers."""
