"""The torch side of depth estimation: an export fix. Imported only with torch.

Depth Anything's head sizes its upsampling with ``int(patch_height * patch_size)``;
``int`` of a symbolic size makes torch.export pin the picture's height and width to
the traced ones, while the processor resizes every picture to its own aspect ratio.
"""

from __future__ import annotations

import builtins
import importlib
from typing import Any

import torch

# transformers modules whose forward calls int() on a size derived from the picture's
_INT_OF_SIZE = {"depth_anything": "transformers.models.depth_anything.modeling_depth_anything"}


def _size_int(value: Any) -> Any:
    """``int`` that keeps a symbolic size symbolic while torch.export traces it (an int in eager mode)."""
    return value if isinstance(value, torch.SymInt) else builtins.int(value)


def allow_dynamic_size(model_type: str) -> None:
    """Let the model export with a dynamic height and width: a module-level ``int`` that leaves sizes symbolic."""
    module = _INT_OF_SIZE.get(model_type)
    if module is not None:
        importlib.import_module(module).int = _size_int  # type: ignore[attr-defined]
