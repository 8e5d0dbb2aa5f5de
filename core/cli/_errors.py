"""Running the CLI: user errors become one line on stderr and a distinct exit code."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errdefs import PyctrError

# typer >= 0.22 vendors click as ``typer._click`` (and no longer depends on click); older typer uses
# click itself.  Find the usage-error base class through typer's own public exception either way.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def run_cli(app: typer.Typer, argv: list[str]) -> Any:
    cmd = typer.main.get_command(app)
    debug = "--debug" in argv or bool(os.environ.get("PYCTR_DEBUG"))
    try:
        rv = cmd.main(args=argv, prog_name="pyctr", standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except _ClickException as e:
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        print("pyctr: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("pyctr: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except PyctrError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"pyctr: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"pyctr: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(1)
    if isinstance(rv, int):
        sys.exit(rv)
    return rv
