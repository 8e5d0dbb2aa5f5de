"""The embedded metadata store: one SQLite database (WAL) under the plugin's root."""
