"""Datasets, loaders, partitioning and preprocessing for medflower hospitals."""
