"""The runc runtime: shims supervising containers through runc (see :mod:`.manager`, :mod:`.shim`).

Nothing is imported here: the shim process imports its modules one by one to stay small.
"""
