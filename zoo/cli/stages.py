"""Progress of the long commands (export, optimize): which stage they are in, and the memory so far."""

from __future__ import annotations

from typing import Any

import typer


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, across the verification grid's per-case peak resets."""
    from exporters.memory import lifetime_peak

    return lifetime_peak() / 1024**3



class StageProgress:
    """A long command's stages on stderr: a spinner on a terminal, one line per stage otherwise.

    Lines (with the process's peak memory so far) keep the last stage in a log even when the
    process is killed from outside, e.g. by the kernel's out-of-memory killer.
    """

    def __init__(self, command: str, quiet: bool):
        self.command = command
        self.quiet = quiet
        self.progress: Any = None

    def __enter__(self) -> Any:
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return self.line
        if self.quiet:
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.command)
        return self.step

    def step(self, message: str) -> None:
        self.progress.update(self.task, description=message)

    def line(self, message: str) -> None:
        typer.echo(f"{self.command}: {message} [peak memory {peak_rss_gib():.1f} GiB]", err=True)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
