"""pyctr's built-in plugins.  Each lives in ``plugins/<kind>/<impl>/``: a plain library module with no
import side effects, and a short ``plugin.py`` that registers it through the ``pyctr.plugins``
entry-point group, exactly as a third-party plugin would."""
