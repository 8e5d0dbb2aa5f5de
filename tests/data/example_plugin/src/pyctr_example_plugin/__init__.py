"""An example third-party pyctr plugin (see README.md)."""
