"""The event envelope and containerd's topic names."""

from __future__ import annotations

import re

# The dispatch hot path defines the envelope type; both implementations share this API.
from .._speedups.eventbus import Envelope
from ..errdefs import InvalidArgument

TASK_CREATE = "/tasks/create"
TASK_START = "/tasks/start"
TASK_EXIT = "/tasks/exit"
TASK_OOM = "/tasks/oom"
TASK_DELETE = "/tasks/delete"
TASK_PAUSED = "/tasks/paused"
TASK_RESUMED = "/tasks/resumed"
TASK_EXEC_ADDED = "/tasks/exec-added"
TASK_EXEC_STARTED = "/tasks/exec-started"
CONTAINER_CREATE = "/containers/create"
CONTAINER_UPDATE = "/containers/update"
CONTAINER_DELETE = "/containers/delete"
IMAGE_CREATE = "/images/create"
IMAGE_UPDATE = "/images/update"
IMAGE_DELETE = "/images/delete"
CONTENT_CREATE = "/content/create"
CONTENT_DELETE = "/content/delete"
SNAPSHOT_PREPARE = "/snapshot/prepare"
SNAPSHOT_COMMIT = "/snapshot/commit"
SNAPSHOT_REMOVE = "/snapshot/remove"
NAMESPACE_CREATE = "/namespaces/create"
NAMESPACE_UPDATE = "/namespaces/update"
NAMESPACE_DELETE = "/namespaces/delete"

#: Sent to one subscriber, in its own stream, when its queue overflowed: payload ``{"dropped": N}``.
OVERFLOW_TOPIC = "/events/overflow"

TOPICS: tuple[str, ...] = (
    TASK_CREATE, TASK_START, TASK_EXIT, TASK_OOM, TASK_DELETE, TASK_PAUSED, TASK_RESUMED,
    TASK_EXEC_ADDED, TASK_EXEC_STARTED, CONTAINER_CREATE, CONTAINER_UPDATE, CONTAINER_DELETE,
    IMAGE_CREATE, IMAGE_UPDATE, IMAGE_DELETE, CONTENT_CREATE, CONTENT_DELETE, SNAPSHOT_PREPARE,
    SNAPSHOT_COMMIT, SNAPSHOT_REMOVE, NAMESPACE_CREATE, NAMESPACE_UPDATE, NAMESPACE_DELETE,
)

_COMPONENT = re.compile(r"^[A-Za-z0-9]+([._-][A-Za-z0-9]+)*$")


def validate_topic(topic: str) -> str:
    """A topic starts with ``/`` and each component is an identifier (containerd's rule)."""
    if not isinstance(topic, str) or not topic.startswith("/") or len(topic) > 255:
        raise InvalidArgument(f"invalid event topic {topic!r}: must start with '/'")
    for part in topic[1:].split("/"):
        if not _COMPONENT.match(part):
            raise InvalidArgument(f"invalid event topic {topic!r}: component {part!r} is not an identifier")
    return topic


__all__ = ["OVERFLOW_TOPIC", "TOPICS", "Envelope", "validate_topic"]
