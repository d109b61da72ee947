"""The typer app and its global options (shared by every sub-command)."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="zoo",
    help="Model-zoo registry and export toolkit: resolve, fine-tune, export to verified ONNX, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class State:
    registries: list[str] = []
    debug: bool = False


state = State()


def _version(value: bool) -> None:
    if value:
        from zoo import __version__

        typer.echo(f"zoo {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    registry: Annotated[list[str] | None, typer.Option(
        "--registry", "-r", help="Extra registry YAML file(s) that add or override entries "
        "(also $ZOO_REGISTRY, separated by ':').")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """zoo: from a model name and your data to a verified artifact you can ship."""
    state.registries = list(registry or [])
    state.debug = debug
