"""``pyctr.diff.walking``: the default differ (:mod:`.differ`), registered by :mod:`.plugin`."""
