"""Conformance suites every implementation of a pyctr interface runs (built-in or third-party).

* :mod:`pyctr.testsuite.snapshots` -- snapshotters (:class:`pyctr.snapshots.Snapshotter`).

These modules import pytest: use them from tests only.
"""
