"""Conformance suites every implementation of a pyctr interface runs (built-in or third-party).

* :mod:`pyctr.testsuite.snapshots` -- snapshotters (:class:`pyctr.snapshots.Snapshotter`).
* :mod:`pyctr.testsuite.content` -- content stores (:class:`pyctr.content.ContentStore`).

These modules import pytest: use them from tests only.
"""
