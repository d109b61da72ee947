"""Typed errors. Every message says what was given, what is valid, and the fix.

The CLI turns any ``ZooError`` into one line on stderr and exit code 1; the
Python API raises the same objects, so scripts can catch them by type.
"""

from __future__ import annotations

import re


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


class NameNotFoundError(ZooError, LookupError):
    """A model name that is neither an alias, a source id nor a folder."""


class RegistryError(ZooError, ValueError):
    """One or more problems in registry files; all are listed at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        # one line (the CLI's rule for errors) however many problems there are
        head = "registry" if len(self.problems) == 1 else f"{len(self.problems)} problems in the registry"
        super().__init__(f"{head}: " + "; ".join(self.problems))


class ModelUnavailableError(ZooError):
    """Weights or configuration are not local and cannot be fetched."""


class UnsupportedTaskError(ZooError, ValueError):
    """A model or artifact of a task (or architecture) that zoo does not handle; names the valid ones."""


class ConfigError(ZooError, ValueError):
    """Bad options or settings (flags, training config, export settings)."""


class DataError(ZooError, ValueError):
    """A data set that is missing, empty or shaped wrongly."""


class ExportError(ZooError):
    """Both exporters failed, or the ONNX graph fails the checker."""


class VerificationError(ZooError):
    """The exported model does not behave like its source. Carries the report."""

    def __init__(self, message: str, report: object | None = None):
        self.report = report
        super().__init__(message)


class GateError(VerificationError):
    """An optimised graph failed an accuracy or speed gate (``zoo optimize``). Carries the gate report."""


class ArtifactError(ZooError):
    """An artifact directory that is incomplete, tampered with or unreadable."""


class InputError(ZooError, ValueError):
    """Inputs given to an exported model that do not match what it expects."""


class LaunchError(ZooError):
    """A distributed worker failed; the message names the rank."""


class ZooWarning(UserWarning):
    """Something zoo does on request although it is risky; the CLI prints it as one 'warning:' line."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(exc: BaseException, limit: int = 300, *, named: bool = False) -> str:
    """The first line of an exception's message (libraries often add pages of detail below it);
    ``named`` puts the exception's type in front, for messages that say nothing without it."""
    text = _ANSI.sub("", str(exc)).strip()  # torch.onnx colours its messages for a terminal
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0][:limit]
    return f"{type(exc).__name__}: {line}" if named else line
