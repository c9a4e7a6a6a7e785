"""The batch engine: what a batch is asked (spec), how it runs (runner, latency, polling),
how it is handed between processes (window) and stopped (cancel)."""
