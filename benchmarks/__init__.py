"""Speed and memory benchmarks of the attribution methods and the patch-metric evaluators.

Entry point: ``python benchmarks/run.py [--quick] [--device cpu|cuda] [--autocast] [--scaling]``.
The measurements live in :mod:`benchmarks.core`; ``run.py`` only parses, prints and reports.
"""
