"""Verification results: one ``Check`` per thing checked, gathered in a ``VerifyReport``.

No torch and no onnx here: the exporter, ``zoo verify``, ``zoo optimize`` and the
tasks' agreement checks all produce these, and the runtime reads them back
from manifests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Check:
    """One line of the report: what was checked, the measured value and the limit it must meet."""

    name: str
    passed: bool
    value: str = ""
    limit: str = ""
    detail: str = ""


@dataclass
class VerifyReport:
    """Every check run on one export or artifact; ``passed`` only when all of them passed."""

    subject: str
    checks: list[Check] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)  # the memory plan: budget, per case estimate and peaks

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        data = {k: v for k, v in data.items() if k != "passed"}
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**data)

    def summary(self) -> str:
        failed = "; ".join(f"{c.name}: {c.value}" + (f" (limit {c.limit})" if c.limit else "")
                           + (f" [{c.detail}]" if c.detail else "") for c in self.failures)
        head = f"{len(self.checks) - len(self.failures)}/{len(self.checks)} checks passed"
        return head + (f"; failed: {failed}" if failed else "")

    def table(self, *, compact: bool | None = None) -> Any:
        """A rich table; compact (name, result, value) when everything passed."""
        from rich.markup import escape
        from rich.table import Table

        compact = self.passed if compact is None else compact
        status = "[green]verified[/green]" if self.passed else "[red]FAILED[/red]"
        grid = f"{len(self.shapes)} distinct shapes, {len(self.seeds)} seeds" if self.shapes else ""
        table = Table(title=f"{escape(self.subject)}: {status} {grid} ({self.seconds:.1f}s)")
        columns = ("check", "result", "value") if compact else ("check", "result", "value", "limit", "detail")
        for column in columns:
            table.add_column(column, overflow="fold")
        for c in self.checks:
            mark = "[green]ok[/green]" if c.passed else "[red]FAIL[/red]"
            row = [escape(c.name), mark, escape(c.value)]
            if not compact:
                row += [escape(c.limit), escape(c.detail)]
            table.add_row(*row)
        return table
