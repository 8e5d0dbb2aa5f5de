"""Events: envelopes, containerd's topics, and the exchange that fans them out.

An event is an :class:`~pyctr.events.envelope.Envelope` (timestamp, namespace, topic, payload).
Topics are containerd's (``/tasks/exit``, ``/images/create``, ...), listed in :data:`TOPICS`.
Subscribers select events with containerd's filter syntax over the fields ``topic``, ``namespace``
and ``event.<field>`` (``topic~="/tasks/"``, ``namespace==default``; several filters are ORed).
"""

from __future__ import annotations

from .envelope import OVERFLOW_TOPIC, TOPICS, Envelope, validate_topic

__all__ = ["OVERFLOW_TOPIC", "TOPICS", "Envelope", "validate_topic"]
