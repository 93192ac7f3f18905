"""Experiments from one config: plan of cells, resumable SQLite store, executors (local, process pool, Ray)."""
