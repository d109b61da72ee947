"""A GGUF file (llama.cpp's format) as a model source: dequantised once into a transformers folder.

    zoo export SmolLM2-135M-Instruct.Q4_1.gguf --onnx --out artifacts/smollm2

transformers reads GGUF (with the ``gguf`` and ``accelerate`` packages) into an ordinary
model, every quantised tensor dequantised to float32, with the tokenizer and chat template
the file carries. zoo saves that once with ``save_pretrained`` into a folder named after the
file's sha256 under ``$ZOO_CACHE/gguf`` (default ``~/.cache/zoo``), written aside and renamed
into place, with ``gguf.json``: the file, its hash and how many tensors of each GGUF type were
dequantised. From then on the folder is a transformers folder like any other.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from zoo.artifact import sha256_file
from zoo.errors import ConfigError, first_line

RECORD = "gguf.json"
PACKAGES = "pip install gguf accelerate"


def cache_root() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo")).expanduser() / "gguf"


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type (Q4_1, F32 ...) the file holds; a damaged file is one ConfigError."""
    reader = _reader(path)
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))


def _reader(path: Path) -> Any:  # a gguf.GGUFReader (gguf is an optional dependency)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError(f"reading {path.name} needs the gguf package: {PACKAGES}") from None
    try:
        return GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError ... on a damaged file
        raise ConfigError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {first_line(exc, 120)}); "
                          "it may be truncated: download it again") from exc


def dequantised_folder(path: Path) -> tuple[Path, dict[str, int]]:
    """The transformers folder of GGUF file ``path`` (made on first use) and its tensor types."""
    path = Path(path).expanduser().resolve()
    types = tensor_types(path)  # first: a damaged file is refused before anything is loaded or written
    digest = sha256_file(path)
    folder = cache_root() / digest[:16]
    if (folder / RECORD).is_file():
        return folder, types
    stage = folder.with_name(folder.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        _convert(path, stage)
        (stage / RECORD).write_text(json.dumps({"file": str(path), "sha256": digest,
                                                "dequantised": types}, indent=2))
        stage.replace(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return folder, types


def describe_dequantised(types: dict[str, int]) -> str:
    """'dequantised from GGUF: 182 Q4_1, 91 F32 tensors' (float tensors were only copied)."""
    return "dequantised from GGUF: " + ", ".join(f"{n} {t}" for t, n in types.items()) + " tensors"


def _convert(path: Path, stage: Path) -> None:
    try:
        import accelerate  # noqa: F401 - transformers needs it to read GGUF
        import torch
        import transformers
    except ImportError:
        raise ConfigError(f"dequantising {path.name} needs transformers, torch and accelerate: {PACKAGES}") from None
    options = {"gguf_file": path.name}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **options)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **options)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"transformers cannot dequantise {path.name}: {first_line(exc, 160)}; zoo reads the GGUF "
                          "architectures transformers reads (llama, mistral, qwen2, phi3, gemma ...)") from exc
    # the weights are plain float32 tensors now: nothing quantised is left for save_pretrained to refuse
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    stage.mkdir(parents=True)
    model.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
