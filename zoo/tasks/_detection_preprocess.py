"""Images to detector inputs with Pillow and numpy, as the model's transformers image processor does it.

The artifact carries the source's ``preprocessor_config.json``; this module reads
it (untrusted: every field is checked) and reproduces the processor's steps:
resize (shortest/longest edge keeping the aspect ratio, YOLOS's multiple-of-16
variant, a maximum height/width, or a fixed size), rescale to [0, 1],
normalise, then pad every image of a batch at the bottom and right to the
largest one, with a ``pixel_mask`` of the real pixels. Images of different
sizes go into one call; each keeps its original size for the boxes.

The arithmetic follows transformers' PIL backend step by step (float64 rescale,
float32 normalisation), so the arrays match it to float rounding; the default
torchvision backend resizes with its own antialiasing and differs by about one
grey level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from zoo.errors import ArtifactError, InputError, ModelUnavailableError, UnsupportedTaskError

CONFIG_FILE = "preprocessor_config.json"
MIN_SIDE = 8  # smaller pictures hold nothing a detector can find; refused in one line
# transformers' image processors whose steps this module reproduces, and their sizing rule
PROCESSORS = {"DetrImageProcessor": "aspect", "RTDetrImageProcessor": "aspect", "YolosImageProcessor": "yolos"}
_YOLOS_MULTIPLE = 16
_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
             3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class ImageSteps:
    """The processor's settings, checked: what ``preprocessor_config.json`` asks for."""

    rule: str  # aspect | yolos
    size: dict[str, int]  # shortest_edge+longest_edge | max_height+max_width | height+width
    resample: int
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    do_pad: bool
    pad_size: tuple[int, int] | None

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) every batch has, or None when it follows the images."""
        if self.do_pad and self.pad_size:
            return self.pad_size
        if self.do_resize and "height" in self.size and not self.do_pad:
            return self.size["height"], self.size["width"]
        return None

    @classmethod
    def from_config(cls, config: Any, where: str = CONFIG_FILE) -> ImageSteps:
        """Check a processor config; one ArtifactError listing every problem otherwise."""
        kind, problems = _processor_kind(config, where, PROCESSORS)
        size = _size(config.get("size"), problems)
        mean, std = _normalisation(config, problems)
        pad = config.get("pad_size")
        pad_size = _size(pad, problems, key="pad_size") if pad else None
        resample, factor = _resampling(config, problems)
        if problems:
            raise ArtifactError(f"{where}: " + "; ".join(problems) + "; re-export the artifact")
        return cls(rule=PROCESSORS[kind], size=size, resample=int(resample),
                   do_resize=bool(config.get("do_resize", True)), do_rescale=bool(config.get("do_rescale", True)),
                   rescale_factor=float(factor), do_normalize=bool(config.get("do_normalize", True)),
                   mean=mean, std=std, do_pad=bool(config.get("do_pad", True)),
                   pad_size=(pad_size["height"], pad_size["width"]) if pad_size else None)

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSteps:
        path = Path(folder) / CONFIG_FILE
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path} is missing; a detection artifact carries its image processor's config: "
                                "re-export it") from None
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is not readable JSON ({exc}); re-export the artifact") from exc
        return cls.from_config(config, str(path))

    # ------------------------------------------------------------ one image

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the processor resizes an image of this size to."""
        if not self.do_resize:
            return height, width
        if "shortest_edge" in self.size:
            short, long = self.size["shortest_edge"], self.size["longest_edge"]
            if self.rule == "yolos":
                return _yolos_size(height, width, short, long)
            return _aspect_size(height, width, short, long)
        if "max_height" in self.size:
            scale = min(self.size["max_height"] / height, self.size["max_width"] / width)
            return int(height * scale), int(width * scale)
        return self.size["height"], self.size["width"]

    def transform(self, image: Image.Image) -> np.ndarray:
        """One RGB image to a (3, H, W) float32 array, resized, rescaled and normalised."""
        height, width = self.resized_size(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), _RESAMPLE[self.resample])
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        pixels = array.astype(np.float32)
        if self.do_rescale:
            # transformers rescales in float64 and rounds once to float32: same bits here
            pixels = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
            std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels


def steps_from_folder(steps: type[ImageSteps], folder: Path, needs: str) -> Any:
    """The folder's image-processor settings read by STEPS; a missing or unsupported config names the remedy."""
    if not (Path(folder) / CONFIG_FILE).is_file():
        raise ModelUnavailableError(f"{folder} has no {CONFIG_FILE}; {needs} needs its image processor beside "
                                    "the weights: AutoImageProcessor.from_pretrained(ORIGINAL).save_pretrained(folder)")
    try:
        return steps.from_folder(folder)
    except ArtifactError as exc:
        raise UnsupportedTaskError(str(exc).replace("; re-export the artifact", "")) from None


def _processor_kind(config: Any, where: str, processors: Any) -> tuple[str, list[str]]:
    """The config's image-processor class (no Pil/Fast suffix) and the problem list, naming it if unsupported."""
    if not isinstance(config, dict):
        raise ArtifactError(f"{where} is not a JSON object; re-export the artifact")
    kind = str(config.get("image_processor_type", "")).removesuffix("Pil").removesuffix("Fast")
    return kind, [] if kind in processors else [f"image_processor_type '{kind}' (zoo reproduces "
                                                f"{', '.join(processors)})"]


def _normalisation(config: dict[str, Any], problems: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean and image_std; problems are collected, not raised."""
    mean, std = _triple(config.get("image_mean"), "image_mean", problems), \
        _triple(config.get("image_std"), "image_std", problems)
    if any(s <= 0 for s in std):
        problems.append(f"image_std {list(std)} (every value must be positive)")
    return mean, std


def _resampling(config: dict[str, Any], problems: list[str]) -> tuple[Any, Any]:
    """resample (a PIL filter number) and rescale_factor as the config gives them; problems are collected."""
    resample = config.get("resample", 2)
    if resample not in _RESAMPLE:
        problems.append(f"resample {resample!r} (valid: {', '.join(map(str, _RESAMPLE))})")
    factor = config.get("rescale_factor", 1 / 255)
    if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        problems.append(f"rescale_factor {factor!r} (a number in (0, 1])")
    return resample, factor


def _size(value: Any, problems: list[str], key: str = "size") -> dict[str, int]:
    """A processor size dict in one of its three forms; problems are collected, not raised."""
    forms = (("shortest_edge", "longest_edge"), ("max_height", "max_width"), ("height", "width"))
    if isinstance(value, dict):
        for form in forms:
            if all(isinstance(value.get(k), int) and not isinstance(value.get(k), bool) and value[k] > 0
                   for k in form):
                return {k: int(value[k]) for k in form}
    problems.append(f"{key} {value!r} (give shortest_edge+longest_edge, max_height+max_width or height+width, "
                    "positive integers)")
    return {"height": 1, "width": 1}


def _triple(value: Any, key: str, problems: list[str]) -> tuple[float, float, float]:
    if (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return float(value[0]), float(value[1]), float(value[2])
    problems.append(f"{key} {value!r} (three numbers, one per RGB channel)")
    return 0.0, 0.0, 1.0


def _capped_short(height: int, width: int, short: int, long: int) -> tuple[int, float]:
    """(the short side, rounded; its unrounded value) once the long side is kept within ``long``."""
    small, large = float(min(height, width)), float(max(height, width))
    if large / small * short > long:
        exact = long * small / large
        return round(exact), exact
    return short, float(short)


def _aspect_size(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """The shorter side becomes ``short`` unless the longer would pass ``long`` (DETR's rule, floored)."""
    short, scaled = _capped_short(height, width, short, long)
    if (height <= width and height == short) or (width <= height and width == short):
        return height, width
    if width < height:
        return int(scaled * height / width), short
    return short, int(scaled * width / height)


def _yolos_size(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """YOLOS's variant: the portrait test comes first, and both sides drop to a multiple of 16."""
    short, scaled = _capped_short(height, width, short, long)
    if width < height:
        out_h, out_w = int(scaled * height / width), short
    elif (height <= width and height == short) or (width <= height and width == short):
        out_h, out_w = height, width
    else:
        out_h, out_w = short, int(scaled * width / height)
    return out_h - out_h % _YOLOS_MULTIPLE, out_w - out_w % _YOLOS_MULTIPLE


# ---------------------------------------------------------------- a batch


@dataclass(frozen=True)
class DetectionBatch:
    """Graph arrays for a batch of images, and each image's original (height, width) for the boxes."""

    arrays: dict[str, np.ndarray]
    sizes: list[tuple[int, int]]


class DetectionPreprocessor:
    """Raw images (paths, PIL images, uint8 arrays) -> ``DetectionBatch``."""

    def __init__(self, steps: ImageSteps, input_names: list[str]):
        self.steps = steps
        self.mask = "pixel_mask" in input_names
        self.pixel_name = input_names[0]

    @classmethod
    def from_artifact(cls, folder: Path, manifest: Any) -> DetectionPreprocessor:
        return cls(ImageSteps.from_folder(folder), [i.name for i in manifest.inputs])

    def __call__(self, items: list[Any]) -> DetectionBatch:
        images = [load_image(item, i) for i, item in enumerate(items)]
        return self.batch(images)

    def batch(self, images: list[Image.Image]) -> DetectionBatch:
        """RGB images -> padded arrays (all images of one call share the largest height and width)."""
        if not images:
            raise InputError("no images given; pass one image or a list of them")
        pixels = [self.steps.transform(image) for image in images]
        height, width = self.steps.pad_size or (max(p.shape[1] for p in pixels), max(p.shape[2] for p in pixels))
        if not self.steps.do_pad and len({p.shape for p in pixels}) > 1:
            raise InputError(f"images resize to different sizes {sorted({p.shape[1:] for p in pixels})} and this "
                             "processor does not pad; predict them one at a time (zoo predict --batch-size 1)")
        batch = np.zeros((len(pixels), 3, height, width), dtype=np.float32)
        mask = np.zeros((len(pixels), height, width), dtype=np.int64)
        for i, p in enumerate(pixels):
            if p.shape[1] > height or p.shape[2] > width:
                raise InputError(f"image {i} resizes to {p.shape[1]}x{p.shape[2]}, larger than the processor's "
                                 f"pad_size {height}x{width}")
            batch[i, :, : p.shape[1], : p.shape[2]] = p
            mask[i, : p.shape[1], : p.shape[2]] = 1
        arrays = {self.pixel_name: batch}
        if self.mask:
            arrays["pixel_mask"] = mask
        return DetectionBatch(arrays=arrays, sizes=[(image.height, image.width) for image in images])


# ---------------------------------------------------------------- opening images


def load_image(item: Any, index: int) -> Image.Image:
    """An RGB PIL image from a path, PIL image or uint8 array; one InputError line for anything else."""
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise InputError(f"input {index}: image file '{path}' does not exist; give an image path, a PIL image "
                             "or a uint8 array (H, W[, C])")
        try:
            with Image.open(path) as opened:
                opened.load()
                # the orientation a viewer shows (and transformers' load_image applies): boxes match the picture
                image = to_rgb(ImageOps.exif_transpose(opened))
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow's decoders raise all three on damaged files
            raise InputError(f"input {index}: '{path}' is not an image Pillow can read ({exc}); check the file "
                             "is a complete PNG/JPEG/...") from exc
    elif isinstance(item, Image.Image):
        image = to_rgb(item)
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise InputError(f"input {index}: array of dtype {item.dtype} and shape {item.shape}; an image array must "
                             "be uint8 with shape (H, W), (H, W, 3) or (H, W, 4)")
        image = to_rgb(Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item))
    else:
        raise InputError(f"input {index} is {type(item).__name__}; an object detector expects image paths, PIL "
                         "images or uint8 numpy arrays")
    check_size(image, f"input {index}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; 16-bit greyscale keeps its range (Pillow's own convert would clip it)."""
    if image.mode in _SIXTEEN_BIT:
        wide = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(wide * 255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_size(image: Image.Image, what: str) -> None:
    if min(image.width, image.height) < MIN_SIDE:
        raise InputError(f"{what}: the image is {image.width}x{image.height} pixels; object detection needs at "
                         f"least {MIN_SIDE}x{MIN_SIDE} (a thumbnail this small holds nothing to find)")
