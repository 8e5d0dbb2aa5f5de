"""pyctr's RPC: msgpack frames over a unix socket between ``pyctr.Client(address=...)`` and ``pyctrd``.

The wire format is documented in ``PROTOCOL.md`` beside this module.  :mod:`.codec` holds framing and
value encoding, :mod:`.server` the daemon side, :mod:`.client` the remote objects the client uses.
"""

PROTOCOL_VERSION = 1
