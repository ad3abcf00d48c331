"""Analyses of finished runs: paired comparisons, claims, rankings and verdicts."""
