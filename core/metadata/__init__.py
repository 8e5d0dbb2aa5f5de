"""The embedded metadata store (SQLite in WAL mode) and the namespaced stores built on it."""
