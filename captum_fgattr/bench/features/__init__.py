"""The SAE feature study (``fgattr features``): a run's components, case studies, prototypes and their report."""
