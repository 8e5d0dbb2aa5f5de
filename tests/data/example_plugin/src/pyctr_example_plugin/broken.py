"""A plugin module that cannot be imported: pyctr shows it as an error and loads the rest."""

raise ImportError("this example plugin needs libexample, which is not installed")
