"""``pyctr.images.metadata``: image records over the metadata store, archive import and export, unpack.

The library lives in :mod:`.service` (:class:`ImageService`, the plugin's instance), :mod:`.archive`
(OCI layout and docker-archive import/export) and :mod:`.unpack` (layers into a snapshotter).
:mod:`.plugin` only registers it.
"""
