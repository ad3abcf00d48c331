"""Datasets: published layouts (``LAYOUTS``), preprocessing, and the embedded Br35H scans."""
