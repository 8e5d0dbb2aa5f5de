"""``pyctr.containers.metadata``: container records + snapshots + tasks (see :mod:`.service`)."""
