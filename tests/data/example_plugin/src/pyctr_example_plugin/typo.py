"""A plugin module with a misspelt hook: pyctr refuses this module alone, naming the hook."""

from __future__ import annotations

from typing import Any

from pyctr import hookimpl


@hookimpl
def pyctr_plugin_registraions() -> list[Any]:  # sic: "registraions"
    return []
