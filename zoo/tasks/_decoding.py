"""What prefill and decode steps share, torch-free: position ids under left padding."""

from __future__ import annotations

import numpy as np


def positions(mask: np.ndarray) -> np.ndarray:
    """transformers' position ids under left padding (``generate``): real tokens count from 0, padding sits at 1."""
    return np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1).astype(np.int64)
