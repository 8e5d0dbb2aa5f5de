"""Compiled hot paths, each with a pure-Python twin.

Every speedup ``X`` is three modules: ``X.py`` picks ``_X_c`` (Cython) or ``_X_py`` (pure Python);
``PYCTR_NO_EXTENSIONS=1`` in the environment forces the twins.  :func:`use_extensions` says which.
"""

from __future__ import annotations

import os


def use_extensions() -> bool:
    return not os.environ.get("PYCTR_NO_EXTENSIONS")
