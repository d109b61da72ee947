"""The ``zoo`` command. Each sub-command lives in its own module and calls the Python API.

    zoo list --task image-classification
    zoo info resnet50 --json
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

import typer

try:  # typer >= 0.20 vendors click; older versions use the click package
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from zoo.cli.app import app
from zoo.errors import ZooError

# What a runtime-only install (pip install zoo-toolkit) lacks: the [train] extra brings all of it.
TRAIN_EXTRA_MODULES = frozenset({"torch", "torchvision", "timm", "transformers", "safetensors", "onnxscript",
                                 "onnx_ir", "datasets", "sklearn", "matplotlib", "sentence_transformers"})

# The last thing before the interpreter's own teardown: the objects alive then are frozen, out of the
# garbage collector's reach. Teardown still frees what it releases, but no longer walks the whole heap
# for cycles: with torch, transformers and the exporter's graphs loaded that walk took ~2 s CPU at the
# end of every 'zoo export' (MiniLM: 2.0 to 2.4 s of a 22 s export; 0.2 s frozen). Handlers registered
# later (by the libraries, on import) run before this one.
atexit.register(gc.freeze)

# Sub-command modules register themselves on ``app`` when imported.
from zoo.cli import chat, export, finetune, models, optimize, runtime, serve  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a ZooError becomes one line on stderr and exit code 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ZOO_DEBUG") == "1"
    _plain_warnings()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="zoo", standalone_mode=False)
    except ZooError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if debug or missing not in TRAIN_EXTRA_MODULES:
            raise
        typer.echo(f"error: {_needs_extra(command, argv, missing)}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:
        if debug:
            raise
        typer.echo(f"error: {_usage_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_line(exc: ClickException) -> str:
    """A bad flag, value or command as one line that points at the help of the command it was given to."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{message.rstrip('.')}; see '{ctx.command_path} --help'"


def _plain_warnings() -> None:
    """zoo's own warnings print as one 'warning: ...' line on stderr; others keep Python's format."""
    import warnings

    from zoo.errors import ZooWarning

    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if issubclass(category, ZooWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, *args, **kwargs)  # type: ignore[arg-type]

    warnings.showwarning = show


def _needs_extra(command: object, argv: list[str], missing: str) -> str:
    """One line for a command that needs the deep-learning stack in a runtime-only install."""
    names = getattr(command, "commands", {})
    used = next((a for a in argv if a in names), None)
    what = f"'zoo {used}'" if used else "this command"
    return (f"{what} needs {missing}, which is not installed (the core install holds the runtime only: zoo.load, "
            "zoo predict, zoo bench, and zoo verify without --against-source); install the training and export "
            "extra with: pip install 'zoo-toolkit[train]'")
