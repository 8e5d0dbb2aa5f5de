"""Runtime plugins (``pyctr.runtime.*``)."""
