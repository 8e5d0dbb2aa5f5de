"""Container plugins (``pyctr.containers.*``)."""
