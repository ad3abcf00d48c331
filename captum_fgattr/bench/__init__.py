"""The study's benchmark: data, models, methods, evaluation, durable results, report and CLI."""
