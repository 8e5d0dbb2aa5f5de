"""The registry client (OCI distribution spec / Docker Registry HTTP API v2): pull and push.

Modules: :mod:`.hosts` (per-host TLS and scheme), :mod:`.auth` (credentials, challenges, tokens),
:mod:`.client` (HTTP transport, retries, errors), :mod:`.pull`, :mod:`.push`, :mod:`.service` (the
plugin's instance), :mod:`.plugin` (registration).  Importing this package has no side effects.
"""
