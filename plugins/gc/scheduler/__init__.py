"""``pyctr.gc.scheduler``: runs the metadata garbage collector on demand, after deletions and on a timer."""
