"""The runc runtime (plugin ``pyctr.runtime.runc``): containers run by runc under pyctr's shims.

Nothing is imported here: the shim process imports its modules one by one to stay small.

Modules
    ``manager``      :class:`~.manager.RuncRuntime` (the :class:`pyctr.runtime.Runtime`) and
                     :class:`~.manager.RuncTask`: bundles, shim start and reuse, recovery.
    ``shim``         the shim process and the zygote that forks shims.
    ``shim_client``  the RPC client (msgpack frames, SCM_RIGHTS for stdio fds).
    ``runc``         runc command lines and error messages.  ``cgroups``: paths, figures, removal.
    ``bundle``       bundle directories.  ``plugin``: the registration.

State (``<state>/pyctr.runtime.runc/``)
    ``<ns>/<id>/``   the bundle (0700): ``config.json``, ``rootfs/`` (the mounted snapshot),
                     ``shim.json`` (the shim's address and group, written before the create RPC),
                     ``init.pid``, ``exit`` (written by the shim, fsync + rename, as soon as the init
                     process is reaped), ``log.json`` (runc), ``events.jsonl`` (every event the shim
                     published), ``status.json`` (only for a task whose shim died: 255 "shim died",
                     or the status the ``exit`` file recorded).
    ``runc/<ns>/``   runc's ``--root``.
    ``s/``           sockets: one per shim, ``<sha256(state/ns/group)[:32]>.sock``; ``zygote.sock``;
                     ``events.sock`` (the daemon's datagram socket for shim events).  A state directory
                     too deep for a socket path uses ``/tmp/pyctr-s-<hash>`` instead.
    ``shims/``       shim logs (removed when a shim exits cleanly), ``zygote.log``.
    ``.pools/<ns>``  the name (``pool-<8 hex>``) of the namespace's current shim pool (temp + rename).

Shims
    A shim serves any number of tasks of one namespace: those created with the same ``group`` (batch
    launches, pods; ``default_group`` in the configuration for all tasks).  Tasks created without a
    group go to the namespace's current *pool* (``shim_pool_size`` in the configuration, default 32;
    1 or 0: one shim per task, as containerd): the group named in ``.pools/<ns>``, whose shim refuses a
    create (``resource_exhausted``) once it supervises ``max_tasks`` live tasks; the manager then opens
    a new pool (a fresh name written to the file) and creates the task there.  Nothing is scanned: one
    small file read per create, one extra round trip per full pool.  It is the
    child subreaper of the containers, runs runc without blocking (several creates overlap), copies
    stdio with :mod:`pyctr._speedups.shimio` only when something must see the bytes (logs, a TTY,
    ``stdio_copy``) and otherwise hands the destination itself to the container, and exits after the
    delete of its last task.  Shims are forked by a zygote (a warm ``python -S -I`` per state
    directory, started on first use, gone after 2 idle minutes or with its state directory), or
    started cold when there is none.

RPC (4-byte big-endian length + msgpack ``{id, method, params}`` -> ``{id, result}`` or
``{id, error: {code, message}}``, codes from :mod:`pyctr.errdefs` plus ``command_not_found``)
    ``connect``, ``list``, ``create``, ``start``, ``exec``, ``state``, ``kill``, ``pause``,
    ``resume``, ``pids``, ``stats``, ``wait`` (answered when the process has exited and its output
    is drained), ``delete``, ``resize_pty``, ``close_stdin``, ``set_publish``, ``shutdown``.  Every
    task method takes ``ns``, ``id`` and ``exec_id`` (``""``: the init process); ``create`` takes
    ``max_tasks`` (0: no bound) and fails with ``resource_exhausted`` when the shim is full.

Events
    The shim appends each event to the bundle's ``events.jsonl`` and sends it (msgpack
    :class:`~pyctr.runtime.RuntimeEvent` dict) to the daemon's datagram socket when one is set
    (:meth:`~.manager.RuncRuntime.set_publisher`).  Order as containerd: ``/tasks/create`` <
    ``/tasks/start`` < ``/tasks/exit`` < ``/tasks/delete``; ``/tasks/exec-added`` <
    ``/tasks/exec-started`` < ``/tasks/exit`` (``id`` = the exec id); ``/tasks/oom`` before the exit
    it caused; an exit is held back until its start is published.

Restarts
    :meth:`~.manager.RuncRuntime.load` (run when the plugin starts) reconnects to live shims and settles
    the tasks of dead ones: exit status from the ``exit`` file (or 255 "shim died"), runc state
    removed (``runc delete --force`` kills what is left), cgroup removed, rootfs unmounted; the bundle
    stays, with ``status.json``, until the task is deleted.  Bundles younger than 30 s that look
    unfinished are left alone: another pyctr process may be creating them.
"""
