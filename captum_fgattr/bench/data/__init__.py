"""Datasets: published layouts (``LAYOUTS``: a registry other packages extend) and preprocessing."""
