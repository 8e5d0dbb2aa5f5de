"""The image record store: create/get/list/update/delete per namespace, filters, events, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyctr.content import Descriptor
from pyctr.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyctr.images import Image
from pyctr.metadata.db import MetadataDB
from pyctr.metadata.images import ImageStore

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def events() -> list[tuple[str, str, dict[str, Any]]]:
    return []


@pytest.fixture
def store(tmp_path: Path, events: list[tuple[str, str, dict[str, Any]]]) -> ImageStore:
    db = MetadataDB(tmp_path / "meta.db")
    return ImageStore(db, publish=lambda ns, t, p: events.append((ns, t, p)))


def img(name: str, digest: str = D1, mt: str = MANIFEST, size: int = 10, **labels: str) -> Image:
    target = Descriptor(mt, digest, size, annotations={"a.b": "c"})
    return Image(name=name, target=target, labels=dict(labels))


def test_create_get_roundtrip(store: ImageStore, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    made = store.create("default", img("docker.io/library/busybox:latest", foo="bar"))
    got = store.get("default", "docker.io/library/busybox:latest")
    assert got.target == made.target
    assert got.labels == {"foo": "bar"}
    assert got.created_at == made.created_at > 0
    assert events == [("default", "/images/create",
                       {"name": "docker.io/library/busybox:latest", "labels": {"foo": "bar"}})]
    # the namespace came into being with the first record
    row = store.db.query_one("SELECT name FROM namespaces WHERE name='default'")
    assert row is not None
    # the dict form round-trips
    assert Image.from_dict(got.to_dict()) == got


def test_create_twice_and_namespaces_are_separate(store: ImageStore) -> None:
    store.create("default", img("a:1"))
    with pytest.raises(AlreadyExists):
        store.create("default", img("a:1", D2))
    store.create("other", img("a:1", D2))
    assert store.get("other", "a:1").target.digest == D2
    assert store.get("default", "a:1").target.digest == D1
    with pytest.raises(NotFound):
        store.get("third", "a:1")


@pytest.mark.parametrize("bad", [
    img(""),
    Image(name="x", target=Descriptor(MANIFEST, D1, 0)),
    Image(name="x", target=Descriptor("", D1, 5)),
    img("x", **{"k": "v" * 5000}),
])
def test_invalid_records_are_refused(store: ImageStore, bad: Image) -> None:
    with pytest.raises(InvalidArgument):
        store.create("default", bad)
    assert store.list("default") == []


def test_update_fieldpaths(store: ImageStore, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    store.create("default", img("a:1", keep="1", drop="2"))
    new = img("a:1", D2, drop="", add="3")
    out = store.update("default", new, ["labels.drop", "labels.add"])
    assert out.labels == {"keep": "1", "add": "3"}
    assert out.target.digest == D1  # target not in the fieldpaths
    out = store.update("default", new, ["target"])
    assert out.target.digest == D2
    with pytest.raises(InvalidArgument):
        store.update("default", new, ["name"])
    with pytest.raises(NotFound):
        store.update("default", img("nope:1"), ["labels"])
    assert events[-1][:2] == ("default", "/images/update")


def test_create_or_update_merges_labels(store: ImageStore) -> None:
    _, created = store.create_or_update("default", img("a:1", x="1"))
    assert created
    out, created = store.create_or_update("default", img("a:1", D2, y="2"))
    assert not created
    assert out.labels == {"x": "1", "y": "2"}
    assert out.target.digest == D2


def test_list_filters(store: ImageStore) -> None:
    store.create("default", img("docker.io/library/busybox:1", D1, env="prod"))
    store.create("default", img("docker.io/library/alpine:3", D2, INDEX, env="dev"))
    store.create("default", img("example.com/app:1", D1))

    def names(*f: str) -> list[str]:
        return [i.name for i in store.list("default", f)]

    assert names() == ["docker.io/library/alpine:3", "docker.io/library/busybox:1", "example.com/app:1"]
    assert names("name==example.com/app:1") == ["example.com/app:1"]
    assert names(f"target.digest=={D1}") == ["docker.io/library/busybox:1", "example.com/app:1"]
    assert names(f"target.mediatype=={INDEX}") == ["docker.io/library/alpine:3"]
    assert names("labels.env==prod") == ["docker.io/library/busybox:1"]
    assert names("labels.env") == ["docker.io/library/alpine:3", "docker.io/library/busybox:1"]
    assert names("labels.env==prod", "labels.env==dev") == ["docker.io/library/alpine:3",
                                                            "docker.io/library/busybox:1"]
    assert names("name~=^docker.io,labels.env!=prod") == ["docker.io/library/alpine:3"]
    assert names('annotations."a.b"==c') == names()
    with pytest.raises(InvalidArgument):
        store.list("default", ["name~=("])


Events = list[tuple[str, str, dict[str, Any]]]


def test_delete_marks_the_store_dirty(store: ImageStore, events: Events) -> None:
    kinds: list[str] = []
    store.db.add_mutation_hook(kinds.append)
    store.create("default", img("a:1"))
    store.delete("default", "a:1")
    assert kinds == ["delete"]
    assert events[-1] == ("default", "/images/delete", {"name": "a:1"})
    with pytest.raises(NotFound):
        store.delete("default", "a:1")
    assert store.list("default") == []


def test_by_target(store: ImageStore) -> None:
    store.create("default", img("a:1", D1))
    store.create("default", img("b:1", D1))
    store.create("default", img("c:1", D2))
    assert [i.name for i in store.by_target("default", D1)] == ["a:1", "b:1"]
