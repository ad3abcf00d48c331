"""Markdown / CSV tables and figures written from a run's store."""
