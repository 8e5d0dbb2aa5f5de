"""The ``native`` snapshotter: every snapshot a full copy of its parent; works on any filesystem."""

from .native import NativeSnapshotter

__all__ = ["NativeSnapshotter"]
