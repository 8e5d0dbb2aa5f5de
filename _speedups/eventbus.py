"""The event bus's dispatch path: :class:`Envelope`, :class:`Matcher` (compiled filters),
:class:`Subscriber` (bounded queue) and :class:`Bus` (fan-out).

Picks the Cython implementation (``_eventbus_c``) unless ``PYCTR_NO_EXTENSIONS=1`` is set or it is not
built; ``_eventbus_py`` is the pure-Python twin with the same behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import use_extensions

if TYPE_CHECKING:
    from ._eventbus_py import OVERFLOW_TOPIC, Bus, Envelope, Matcher, Subscriber
    IMPLEMENTATION = "py"
else:
    if use_extensions():
        try:
            from ._eventbus_c import OVERFLOW_TOPIC, Bus, Envelope, Matcher, Subscriber

            IMPLEMENTATION = "c"
        except ImportError:  # not built: fall back to the twin
            from ._eventbus_py import OVERFLOW_TOPIC, Bus, Envelope, Matcher, Subscriber

            IMPLEMENTATION = "py"
    else:
        from ._eventbus_py import OVERFLOW_TOPIC, Bus, Envelope, Matcher, Subscriber

        IMPLEMENTATION = "py"

__all__ = ["IMPLEMENTATION", "OVERFLOW_TOPIC", "Bus", "Envelope", "Matcher", "Subscriber"]
