"""The typer app and its global options (shared by every sub-command)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _plain_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # a flag takes no value: its type column stays empty instead of <bool>
    return params


class ZooCommand(TyperCommand):
    """typer's command with plainer help: ``zoo predict [OPTIONS] ARTIFACT INPUTS...`` and no ``<bool>`` on flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class ZooGroup(TyperGroup):
    """The ``zoo`` group itself: its global flags get the same plain help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class ZooTyper(typer.Typer):
    """Every command registered on the app is a ``ZooCommand``, whichever module registers it."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", ZooCommand)
        return super().command(*args, **kwargs)


app = ZooTyper(
    name="zoo",
    cls=ZooGroup,
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
        "--registry", "-r", metavar="FILE", help="Extra registry YAML file(s) that add or override entries "
        "(also $ZOO_REGISTRY, separated by ':').")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """zoo: from a model name and your data to a verified artifact you can ship."""
    state.registries = list(registry or [])
    state.debug = debug


def out_console(stderr: bool = False) -> Any:
    """A rich console for tables: on a terminal as wide as the terminal; piped or redirected, as wide as
    the content needs, so no column is folded or cut short for ``grep``/``awk``/a file."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=100_000)
