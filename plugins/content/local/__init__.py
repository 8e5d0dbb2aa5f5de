"""``pyctr.content.local``: blobs as files under the plugin's root, laid out as containerd's local store.

See :mod:`.store` for the layout and the guarantees; :mod:`.plugin` registers it.
"""
