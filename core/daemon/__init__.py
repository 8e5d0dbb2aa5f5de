"""pyctrd: the daemon serving pyctr's API on a unix socket."""
