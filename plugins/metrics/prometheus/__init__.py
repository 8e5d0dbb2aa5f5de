"""``pyctr.metrics.prometheus``: Prometheus metrics at ``/v1/metrics`` (per-container cgroup figures,
the daemon's RPC, event bus, transfers, containers, tasks and plugins, and third-party collectors).

Modules: :mod:`.collector` (the collectors, read at scrape time), :mod:`.service` (the plugin
instance), :mod:`.server` (the HTTP endpoint), :mod:`.plugin` (registration and daemon hooks).
"""
