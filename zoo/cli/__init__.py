"""The ``zoo`` command. Each sub-command lives in its own module and calls the Python API.

    zoo list --task image-classification
    zoo info resnet50 --json
"""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.20 vendors click; older versions use the click package
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from zoo.cli.app import app
from zoo.errors import ZooError

# Sub-command modules register themselves on ``app`` when imported.
from zoo.cli import models  # noqa: E402,F401
from zoo.cli import serve  # noqa: E402,F401
from zoo.cli import optimize  # noqa: E402,F401
from zoo.cli import _optional  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a ZooError becomes one line on stderr and exit code 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ZOO_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="zoo", standalone_mode=False)
    except ZooError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
