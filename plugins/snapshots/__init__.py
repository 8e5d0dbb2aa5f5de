"""Built-in snapshotters (``overlayfs``, ``native``) and what they share (:mod:`.storage`, :mod:`.fsutil`)."""
