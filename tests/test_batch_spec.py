"""Batch entries and results as plain data (no runc needed)."""

from __future__ import annotations

import pytest
from pyctr.batch import BatchProgress, BatchResult, BatchSpec, entries_for, from_wire
from pyctr.errdefs import InvalidArgument


def test_spec_from_dict_accepts_aliases_and_env_mapping() -> None:
    e = BatchSpec.from_dict({"image": "img", "cmd": "true", "env": {"A": "1"}, "labels": {"k": 2},
                             "memory": "64m", "id": "x1"})
    assert (e.image, e.args, e.env, e.labels, e.resources, e.id) == ("img", ["true"], ["A=1"], {"k": "2"},
                                                                   {"memory": "64m"}, "x1")
    assert BatchSpec.from_dict(e.to_dict()) == e


@pytest.mark.parametrize("bad", [{"argz": ["x"]}, {"args": [1]}, {"labels": ["a"]}])
def test_spec_from_dict_rejects_what_it_does_not_know(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        BatchSpec.from_dict(bad)


def test_entries_for_count_and_specs() -> None:
    es = entries_for(None, "img", ["sleep", "1"], 3)
    assert [(e.image, e.args) for e in es] == [("img", ["sleep", "1"])] * 3
    es = entries_for([{"args": ["a"]}, {"image": "other"}], "img", ["dflt"])
    assert [(e.image, e.args) for e in es] == [("img", ["a"]), ("other", ["dflt"])]
    with pytest.raises(InvalidArgument):
        entries_for(None, "", None, 2)
    with pytest.raises(InvalidArgument):
        entries_for(None, "img", None, -1)


def test_wire_round_trip() -> None:
    r = BatchResult("c1", 3, pid=10, started_at=1.5, exit_status=0, duration=0.25)
    assert from_wire(r.to_dict()) == r
    running = BatchResult("c2", 4, exit_status=None, status="running")
    assert from_wire(running.to_dict()) == running
    p = BatchProgress("b1", 10, started=4, running=2, exited=1, failed=1, elapsed=0.5)
    assert from_wire(p.to_dict()) == p
