"""Raw inputs to graph arrays, rebuilt from the artifact's own files and manifest: no torch.

Text goes through ``tokenizers`` reading ``tokenizer.json`` (the same Rust
tokenizer that transformers' fast tokenizers wrap), with the truncation length
and padding the manifest records. Images go through Pillow and numpy with timm's
eval-transform semantics (resize, crop, scale to [0, 1], normalise).

Inputs are untrusted, and bounded before any work is done on them:

- a text longer than ``MAX_TEXT_BYTES`` (UTF-8) is refused with InputError, not
  truncated: the model truncates at ``max_length`` tokens anyway, but where a
  megabyte of text would be cut is not something zoo should guess. Split long
  documents yourself. Strings holding lone surrogates (not UTF-8 encodable) are refused too.
- an image of more than ``MAX_IMAGE_PIXELS`` pixels (file, PIL image or array) is
  refused with InputError before it is decoded; Pillow's own decompression-bomb
  guard (its warning and its error) becomes the same InputError; so does a file
  Pillow cannot decode, and an aspect ratio so extreme that the resize would exceed the limit.

Both limits are module attributes: raise them (``zoo.tasks.preprocess.MAX_TEXT_BYTES = ...``)
for a trusted source of larger inputs.

Files are read through ``zoo.artifact.read_bytes``: confined to the artifact and,
when the manifest is known, the bytes parsed are the bytes whose sha256 was checked.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from zoo.artifact import read_bytes
from zoo.errors import ArtifactError, InputError, first_line
from zoo.manifest import CROP_MODES, INTERPOLATIONS, MAX_IMAGE_SIDE

ImageInput = Union[str, Path, Image.Image, np.ndarray]

# 1 MiB of UTF-8 per text: ~250k tokens, hundreds of times any max_length a model has.
MAX_TEXT_BYTES = 1 << 20
# 64 Mpx (8192 x 8192): above 8K video frames and 50 MP photos, below Pillow's own guard
# (Image.MAX_IMAGE_PIXELS, 89 Mpx), which zoo leaves as the user set it.
MAX_IMAGE_PIXELS = 8192 * 8192
# timm's DEFAULT_CROP_PCT: the crop fraction its eval transform uses when none is given.
DEFAULT_CROP_PCT = 0.875
_RESAMPLE = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}
# Opening an image header records Pillow's decompression-bomb warning instead of printing it;
# warnings.catch_warnings is process-wide state, so zoo's own calls take turns (the header read is short).
_OPEN_LOCK = threading.Lock()
TOKEN_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
                 "bool": np.bool_}


def numpy_dtype(name: str) -> Any:
    try:
        return _NUMPY_DTYPES[name]
    except KeyError:
        raise ArtifactError(f"manifest names input dtype '{name}'; this runtime knows "
                            f"{', '.join(_NUMPY_DTYPES)}: re-export the model") from None


# ---------------------------------------------------------------- text


@dataclass(frozen=True)
class TextBatch:
    """Graph arrays for a batch of strings, plus what post-processing needs (offsets, word ids)."""

    arrays: dict[str, np.ndarray]
    texts: list[str]
    offsets: list[list[tuple[int, int]]]
    word_ids: list[list[int | None]]
    special: list[list[int]]


class TextPreprocessor:
    """Tokenise strings with ``tokenizer.json``: truncate at max_length, pad to the longest in the batch."""

    def __init__(self, folder: Path, manifest: Any, names: Sequence[str] | None = None):
        # names: the token inputs, for a graph that also takes other inputs (an image-text model's pixels)
        inputs = [(i.name, numpy_dtype(i.dtype)) for i in manifest.inputs if names is None or i.name in names]
        self._setup(Path(folder), manifest.preprocess, inputs, manifest)

    @classmethod
    def from_record(cls, folder: Path, record: dict[str, Any], inputs: list[tuple[str, Any]]) -> TextPreprocessor:
        """Built from a preprocess record before the manifest exists (the exporter's own check)."""
        self = cls.__new__(cls)
        self._setup(Path(folder), record, inputs, None)
        return self

    def _setup(self, folder: Path, pp: dict[str, Any], inputs: list[tuple[str, Any]], manifest: Any) -> None:
        from tokenizers import Tokenizer

        if not (folder / "tokenizer.json").is_file():
            raise ArtifactError(f"{folder} holds a text model but no tokenizer.json; the runtime reads only "
                                "tokenizers' JSON (a fast tokenizer): re-export the artifact")
        if not pp.get("max_length"):
            raise ArtifactError(f"{folder}/manifest.json records no preprocess.max_length for a text model; "
                                "re-export the artifact with a zoo that writes it")
        self.max_length = int(pp["max_length"])
        self.inputs = inputs
        text = _read_text(folder, "tokenizer.json", manifest)
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises plain Exception from Rust for a bad file
            raise ArtifactError(f"{folder}/tokenizer.json is not a tokenizers JSON file ({first_line(exc)}); "
                                "re-export the artifact") from exc
        settings = _padding_settings(folder, pp, tokenizer, _tokenizer_config(folder, manifest))
        # tokenizer.json often carries its own fixed padding/truncation (MiniLM's pads to 128):
        # replace both with what transformers does for padding=True, truncation=True, max_length=N.
        tokenizer.enable_truncation(self.max_length, direction=settings["truncation_side"])
        # padding "max_length" (SigLIP's prompts): every row padded to max_length, as the model was trained
        tokenizer.enable_padding(direction=settings["padding_side"], pad_id=settings["pad_id"],
                                 pad_token=settings["pad_token"], pad_type_id=settings["pad_type_id"],
                                 length=self.max_length if pp.get("padding") == "max_length" else None)
        # The tokenizer is configured once here and only read afterwards, so threads may share it.
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> TextBatch:
        for i, text in enumerate(texts):
            _check_text(text, i)
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {}
        for name, dtype in self.inputs:
            if name not in TOKEN_FIELDS:
                raise ArtifactError(f"text model input '{name}' is not one the tokenizer makes "
                                    f"({', '.join(TOKEN_FIELDS)}); call the model with arrays: model({name}=...)")
            arrays[name] = np.array([getattr(e, TOKEN_FIELDS[name]) for e in encodings], dtype=dtype)
        return TextBatch(arrays=arrays, texts=list(texts), offsets=[list(e.offsets) for e in encodings],
                         word_ids=[list(e.word_ids) for e in encodings],
                         special=[list(e.special_tokens_mask) for e in encodings])


def _check_text(text: Any, index: int) -> None:
    if not isinstance(text, str):
        raise InputError(f"input {index} is {type(text).__name__}; this text model expects strings")
    try:
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:  # tokenizers would raise a bare TypeError
        raise InputError(f"input {index} holds a lone surrogate character, which is not text (it has no UTF-8 "
                         "form); decode the source with errors='replace'") from None
    if size > MAX_TEXT_BYTES:
        raise InputError(f"input {index} is {size} bytes of UTF-8; the limit is {MAX_TEXT_BYTES} "
                         "(zoo.tasks.preprocess.MAX_TEXT_BYTES): split the text, the model reads only its first "
                         "max_length tokens anyway")


def _read_text(folder: Path, rel: str, manifest: Any) -> str:
    """A text file of the artifact, hash-checked against ``manifest`` when there is one."""
    data = read_bytes(folder, rel, manifest=manifest)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{folder}/{rel} is not UTF-8 text ({exc.reason}); re-export the artifact") from exc


def _tokenizer_config(folder: Path, manifest: Any) -> dict[str, Any]:
    """tokenizer_config.json when the artifact has it (and, with a manifest, lists it); else {}."""
    name = "tokenizer_config.json"
    listed = name in manifest.files if manifest is not None else (folder / name).is_file()
    if not listed:
        return {}
    try:
        config = json.loads(_read_text(folder, name, manifest))
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{folder}/{name} is not valid JSON ({first_line(exc, 120)}); re-export the "
                            "artifact") from exc
    if not isinstance(config, dict):
        raise ArtifactError(f"{folder}/{name} is not a JSON object; re-export the artifact")
    return config


def _padding_settings(folder: Path, pp: dict[str, Any], tokenizer: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Pad token and sides: the manifest first, then tokenizer_config.json, then tokenizer.json's own."""
    own = tokenizer.padding or {}
    pad_token = pp.get("pad_token") or _token_text(config.get("pad_token")) or own.get("pad_token")
    pad_id = pp.get("pad_token_id", pp.get("pad_id"))
    if pad_id is None and pad_token is not None:
        pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ArtifactError(f"{folder} records no pad token (manifest preprocess.pad_token, "
                            "tokenizer_config.json or tokenizer.json padding); batches of different lengths "
                            "cannot be padded: re-export with a tokenizer that has a pad token")
    pad_token = pad_token or tokenizer.id_to_token(int(pad_id))
    if pad_token is None or not 0 <= int(pad_id) < tokenizer.get_vocab_size(with_added_tokens=True):
        raise ArtifactError(f"{folder}: pad token id {pad_id} is not in tokenizer.json's vocabulary; "
                            "re-export the artifact")
    return {
        "pad_token": pad_token,
        "pad_id": int(pad_id),
        "pad_type_id": int(pp.get("pad_type_id", own.get("pad_type_id", 0)) or 0),
        "padding_side": _side(pp.get("padding_side") or config.get("padding_side") or "right"),
        "truncation_side": _side(pp.get("truncation_side") or config.get("truncation_side") or "right"),
    }


def _token_text(token: Any) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as AddedToken dicts
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _side(side: str) -> str:
    if side not in ("left", "right"):
        raise ArtifactError(f"padding/truncation side '{side}' in the artifact; valid: left, right")
    return side


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageBatch:
    """Graph arrays for a batch of images."""

    arrays: dict[str, np.ndarray]


class ImagePreprocessor:
    """timm's eval transform in Pillow + numpy: resize, crop (center | squash | border), normalise."""

    def __init__(self, folder: Path, manifest: Any):
        self._setup(folder, manifest.preprocess, manifest.inputs[0].name, manifest.inputs[0].dtype)

    @classmethod
    def from_record(cls, record: dict[str, Any], input_name: str = "pixel_values",
                    dtype: str = "float32") -> ImagePreprocessor:
        """Built from a preprocess record alone (timm data-config vocabulary)."""
        self = cls.__new__(cls)
        self._setup(Path("."), record, input_name, dtype)
        return self

    def _setup(self, folder: Path, pp: dict[str, Any], input_name: str, dtype: str) -> None:
        missing = [k for k in ("input_size", "mean", "std") if not pp.get(k)]
        if missing:
            raise ArtifactError(f"{folder}/manifest.json lacks preprocess {', '.join(missing)} for an image "
                                "model; re-export the artifact")
        channels, height, width = (int(x) for x in pp["input_size"])
        if channels not in (1, 3):
            raise ArtifactError(f"input_size {pp['input_size']} has {channels} channels; the runtime reads "
                                "1 (grey) or 3 (RGB) channel images")
        self.channels, self.size = channels, (height, width)
        self.mode = "L" if channels == 1 else "RGB"
        self.mean = np.asarray(pp["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(pp["std"], dtype=np.float32).reshape(-1, 1, 1)
        self.crop_pct = float(pp.get("crop_pct") or DEFAULT_CROP_PCT)
        self.crop_mode = pp.get("crop_mode") or "center"
        interpolation = pp.get("interpolation") or "bilinear"
        if interpolation not in _RESAMPLE or self.crop_mode not in CROP_MODES:
            raise ArtifactError(f"preprocess interpolation='{interpolation}', crop_mode='{self.crop_mode}' in "
                                f"the manifest; valid: interpolation in {', '.join(_RESAMPLE)}, crop_mode in "
                                f"{', '.join(CROP_MODES)}")
        self.resample = _RESAMPLE[interpolation]
        self.fill = tuple(round(255 * float(v)) for v in pp["mean"])
        self.input_name = input_name
        self.dtype = numpy_dtype(dtype)

    def __call__(self, images: Sequence[ImageInput]) -> ImageBatch:
        batch = np.stack([self.transform(_open_image(img, i, self.mode)) for i, img in enumerate(images)])
        return ImageBatch({self.input_name: batch.astype(self.dtype, copy=False)})

    def transform(self, image: Image.Image) -> np.ndarray:
        """One PIL image to a normalised (C, H, W) float32 array."""
        image = self._resize_and_crop(image)
        array = np.asarray(image, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        # float32 throughout, in torchvision's order (divide, subtract, divide): bit-identical tensors
        return (array.astype(np.float32) / np.float32(255) - self.mean) / self.std

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        scale = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        if self.crop_mode == "squash":
            image = _resize(image, scale, self.resample)
        elif self.crop_mode == "border":
            image = _resize(image, _keep_ratio(image, scale, longest=True), self.resample)
        elif scale[0] == scale[1]:
            image = _resize(image, _shorter_side(image, scale[0]), self.resample)
        else:
            image = _resize(image, _keep_ratio(image, scale, longest=False), self.resample)
        return _center_crop_or_pad(image, self.size, self.fill if self.crop_mode == "border" else 0,
                                   floor=self.crop_mode == "center-floor")


def _open_image(item: ImageInput, index: int, mode: str) -> Image.Image:
    if isinstance(item, (str, Path)):
        return _open_image_file(item, index, mode)
    if isinstance(item, Image.Image):
        _check_pixels(item.width, item.height, index)
        return _converted(item, index, mode)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise InputError(f"input {index}: array of dtype {item.dtype} and shape {item.shape}; an image array "
                             "must be uint8 with shape (H, W), (H, W, 3) or (H, W, 4). For already preprocessed "
                             "tensors call the model directly: model(pixel_values=...)")
        _check_pixels(item.shape[1], item.shape[0], index)
        image = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item)
        return _converted(image, index, mode)
    raise InputError(f"input {index} is {type(item).__name__}; this image model expects image paths, "
                     "PIL images or uint8 numpy arrays")


def _open_image_file(item: str | Path, index: int, mode: str) -> Image.Image:
    path = Path(item)
    if not path.is_file():
        raise InputError(_not_an_image_file(item, index))
    try:
        with _OPEN_LOCK, warnings.catch_warnings(record=True):
            # Pillow warns past its own Image.MAX_IMAGE_PIXELS; zoo's lower limit refuses those images
            # just below, so the warning is recorded here and dropped rather than printed
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
        with image:
            _check_pixels(image.width, image.height, index)
            return _converted(image, index, mode, path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"input {index}: '{path}' trips Pillow's decompression-bomb guard ({exc}); give a "
                         "smaller image") from exc
    except InputError:
        raise
    except Exception as exc:  # UnidentifiedImageError (an OSError); header parsers also raise ValueError ...
        raise InputError(f"input {index}: '{path}' is not an image Pillow can read ({first_line(exc, 120)})") \
            from exc


def _converted(image: Image.Image, index: int, mode: str, path: Path | None = None) -> Image.Image:
    """``image`` decoded and converted to ``mode``; any decoder failure is an InputError naming the input."""
    what = f"'{path}'" if path is not None else f"a {image.mode} image"
    try:
        return image.convert(mode)
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, EOFError, struct.error ... on bad data
        raise InputError(f"input {index}: {what} cannot be decoded as {mode} ({type(exc).__name__}: "
                         f"{first_line(exc, 120)}); give an RGB or greyscale image") from exc


def _check_pixels(width: int, height: int, index: int) -> None:
    if width < 1 or height < 1:
        raise InputError(f"input {index}: the image is {width} x {height} pixels; an image needs at least one pixel")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"input {index}: the image is {width} x {height} = {width * height} pixels; the limit is "
                         f"{MAX_IMAGE_PIXELS} (zoo.tasks.preprocess.MAX_IMAGE_PIXELS): downscale it first")


def _not_an_image_file(item: str | Path, index: int) -> str:
    """Why a path-like input is not an image file, in the user's own spelling (Path would fold 'https://')."""
    shown = str(item)
    if isinstance(item, str) and "://" in item:
        return (f"input {index}: '{shown}' is a URL; zoo reads local image files only: download it first "
                "(e.g. curl -O URL) and pass the file")
    if Path(item).is_dir():
        return (f"input {index}: '{shown}' is a directory, not an image file; pass the images in it (on the command "
                "line, 'zoo predict ARTIFACT DIR' expands a directory into its image files)")
    return (f"input {index}: image file '{shown}' does not exist; give an image path, a PIL image or a uint8 "
            "array (H, W[, C])")


def _resize(image: Image.Image, size_hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if (image.height, image.width) == tuple(size_hw):
        return image  # torchvision skips an identity resize; so must we, to stay bit-identical
    # the shorter side is scaled to the crop, so a sliver of an image could ask for billions of pixels
    if size_hw[0] * size_hw[1] > MAX_IMAGE_SIDE**2 or min(size_hw) < 1:
        raise InputError(f"an image of {image.width} x {image.height} pixels would be resized to {size_hw[1]} x "
                         f"{size_hw[0]} before the crop (its aspect ratio is too extreme); crop it first")
    return image.resize((size_hw[1], size_hw[0]), resample)


def _shorter_side(image: Image.Image, size: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes ``size``, the longer keeps the aspect (floored)."""
    w, h = image.width, image.height
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _keep_ratio(image: Image.Image, target_hw: tuple[int, int], *, longest: bool) -> tuple[int, int]:
    """timm ResizeKeepRatio: scale by the larger (longest) or smaller ratio to the target size."""
    ratios = (image.height / target_hw[0], image.width / target_hw[1])
    ratio = max(ratios) if longest else min(ratios)
    return round(image.height / ratio), round(image.width / ratio)


def _center_crop_or_pad(image: Image.Image, size_hw: tuple[int, int], fill: int | tuple[int, ...], *,
                        floor: bool = False) -> Image.Image:
    """torchvision CenterCrop (pads with ``fill`` when the image is smaller than the crop); ``floor``: the offsets
    floored, as transformers' image processors crop, where torchvision rounds them."""
    height, width = size_hw
    if image.width < width or image.height < height:
        canvas = Image.new(image.mode, (max(width, image.width), max(height, image.height)),
                           fill if image.mode != "L" else (fill[0] if isinstance(fill, tuple) else fill))
        canvas.paste(image, ((max(width - image.width, 0)) // 2, (max(height - image.height, 0)) // 2))
        image = canvas
    if floor:
        top, left = (image.height - height) // 2, (image.width - width) // 2
    else:
        top = int(round((image.height - height) / 2.0))
        left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))
