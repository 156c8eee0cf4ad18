"""otel-worker's common code: configuration, the distance engine, data, events and storage.

Functions in `functions/` import from here; nothing here imports a function.
"""
