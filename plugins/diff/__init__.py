"""Diff plugins: apply layers onto snapshot mounts and compute layers from two mounts."""
