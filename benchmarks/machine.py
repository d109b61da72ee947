"""What a benchmark ran on, written beside every result (this machine is shared and noisy)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from zoo.versions import library_versions


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "load_average": list(os.getloadavg()),
            "versions": library_versions(), **extra}
