"""Statistics and analyses of stored results: paired comparisons, the SAE feature study."""
