"""The ``overlayfs`` snapshotter: committed layers as overlay lower directories."""

from .overlayfs import OverlaySnapshotter, check_overlay_support

__all__ = ["OverlaySnapshotter", "check_overlay_support"]
