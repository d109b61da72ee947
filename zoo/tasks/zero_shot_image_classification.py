"""zero-shot-image-classification: CLIP / SigLIP image–text models, for zero-shot labels and retrieval.

    zoo export ./clip-vit-base-patch32 --onnx --out artifacts/clip
    zoo predict artifacts/clip cat.jpg --labels "a cat,a dog"      # labels ranked with scores
    model = zoo.load("artifacts/clip")
    model.embed_text(["a cat"]), model.embed_images(["cat.jpg"])   # unit vectors, for retrieval
    zoo finetune ./clip-vit-base-patch32 --data builtin:shapes      # contrastive, on class captions

One graph holds both towers: ``pixel_values`` [batch, C, H, W] and the tokens
[texts, sequence] in, ``image_embeds`` [batch, dim], ``text_embeds`` [texts, dim]
(projected and L2-normalised, as the model's forward gives them) and the model's own
``logits_per_image`` [batch, texts] out. The image and text batches are separate
axes, and either may be empty: the runtime embeds labels or images alone by feeding
the other tower zero rows, so a retrieval index embeds each side once. (Two graphs
would serve that too, but every stage of zoo -- verification, golden data,
optimisation, the runtime -- works on one ``model.onnx``.)

The manifest records what scoring needs beside the graph: ``logit_scale`` (already
exponentiated) and ``logit_bias`` (SigLIP; 0 for CLIP) read from the model's
weights, the prompt ``template`` ("This is a photo of {}.", transformers' pipeline
default) and the ``activation`` (softmax over the labels for CLIP, sigmoid per label
for SigLIP, as transformers' zero-shot pipeline does), and the text padding
(SigLIP pads every prompt to 64 tokens, as its pipeline does). Scores are
``activation(logit_scale * image . text + logit_bias)``; export checks that the
recorded scale and bias reproduce the model's own logits.

Fine-tuning (``_zero_shot_data``, ``_zero_shot_torch``) trains on pictures with class
names, each class's caption being the predict prompt, and validates zero-shot accuracy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from zoo.checks import Check
from zoo.errors import ArtifactError, DataError, InputError
from zoo.folders import read_json
from zoo.spec import InputSpec, ModelSpec, Preprocess, Tolerances
from zoo.tasks._classify import Classifier
from zoo.tasks._image import EXPORT_BATCH, ImageTask, hf_image_preprocess, pixels
from zoo.tasks._text import SENTENCES, load_tokenizer
from zoo.tasks._vectors import cosines
from zoo.tasks.base import Case

# model_type -> (activation, pads to max_length), as transformers' zero-shot pipeline treats each. (siglip2 is not
# here: its vision tower takes NaFlex patch sequences, which zoo's image preprocessing does not make yet.)
MODEL_TYPES = {"clip": ("softmax", False), "siglip": ("sigmoid", True)}
TEMPLATE = "This is a photo of {}."  # transformers' ZeroShotImageClassificationPipeline hypothesis_template
SIGLIP_TEXT_LENGTH = 64  # the pipeline pads SigLIP prompts to this many tokens
OUTPUTS = ("image_embeds", "text_embeds", "logits_per_image")
LABELS = ("cat", "dog", "red circle", "bowl of soup", "mountain at sunset", "city street at night")
ACTIVATIONS = ("softmax", "sigmoid")


def text_names(spec_inputs: Any) -> list[str]:
    """The token inputs among a spec's or a manifest's inputs (everything but the pixels)."""
    return [i.name for i in spec_inputs if i.name != "pixel_values"]


class ZeroShotImageClassification(ImageTask):
    name: ClassVar[str] = "zero-shot-image-classification"
    summary: ClassVar[str] = "image-text models (CLIP, SigLIP): zero-shot labels, image and text embeddings"
    hf_auto_class: ClassVar[str | None] = "AutoModelForZeroShotImageClassification"
    expects: ClassVar[str] = "image paths, PIL images or uint8 arrays, with labels=[...]"
    predict_options: ClassVar[dict[str, type]] = {"labels": list, "template": str, "top_k": int}
    trainable: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "val_accuracy"
    metric_names: ClassVar[tuple[str, ...]] = ("val_loss", "val_accuracy")  # zero-shot accuracy on the class prompts

    def claims_hf(self, architectures: list[str], model_type: str, sentence_transformers: bool) -> bool:
        return not sentence_transformers and model_type in MODEL_TYPES

    def describe_hf(self, folder: Path, config: dict[str, Any],
                    st: dict[str, Any] | None) -> tuple[tuple[Any, ...], Preprocess, tuple[str, ...] | None]:
        vision = config.get("vision_config") or {}
        image = _image_preprocess(folder, vision)
        text = config.get("text_config") or {}
        limit = int(text.get("max_position_embeddings") or 77)
        tok_max = read_json(folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(tok_max, int) and 0 < tok_max < limit:
            limit = tok_max
        if MODEL_TYPES.get(str(config.get("model_type")), ("", False))[1]:
            limit = min(limit, SIGLIP_TEXT_LENGTH)
        names = read_json(folder / "tokenizer_config.json").get("model_input_names") or ["input_ids", "attention_mask"]
        inputs = (InputSpec("pixel_values", "float32", ("batch", *(image.input_size or (3, 224, 224)))),
                  *(InputSpec(n, "int64", ("texts", "sequence")) for n in names if n != "token_type_ids"))
        return inputs, dataclasses.replace(image, max_length=limit, normalize=True), None

    def load_processor(self, spec: ModelSpec, folder: Path | None) -> Any:
        return load_tokenizer(spec, folder)

    # ------------------------------------------------------------ export

    def output_names(self, spec: ModelSpec) -> tuple[str, ...]:
        return OUTPUTS

    def output_axes(self, spec: ModelSpec) -> dict[str, list[str | None]]:
        return {"image_embeds": ["batch", None], "text_embeds": ["texts", None], "logits_per_image": ["batch", "texts"]}

    def axis_bounds(self, spec: ModelSpec) -> dict[str, int]:
        return {"sequence": spec.preprocess.max_length or 77}

    def export_example(self, spec: ModelSpec, processor: Any) -> dict[str, np.ndarray]:
        prompts = [TEMPLATE.format(label) for label in LABELS[:EXPORT_BATCH + 1]]
        return {"pixel_values": pixels(spec.preprocess, EXPORT_BATCH, seed=1234),
                **_tokenize(spec, processor, prompts)}

    def grid(self, spec: ModelSpec, processor: Any, seeds: tuple[int, ...]) -> list[Case]:
        """Per seed: one image against three labels, three images against two (one a long, truncated prompt)."""
        cases = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            labels = [LABELS[i] for i in rng.permutation(len(LABELS))]
            for kind, images, prompts in (("1 image x 3 labels", 1, [TEMPLATE.format(x) for x in labels[:3]]),
                                          ("3 images x 2 labels", 3, [TEMPLATE.format(labels[3]),
                                                                      " ".join(SENTENCES)])):
                inputs = {"pixel_values": pixels(spec.preprocess, images, seed), **_tokenize(spec, processor, prompts)}
                cases.append(Case(kind, seed, inputs, texts=prompts))
        return cases

    def write_preprocessor(self, spec: ModelSpec, processor: Any, stage: Path,
                           folder: Path | None) -> dict[str, Any]:
        import os

        record = super().write_preprocessor(spec, processor, stage, folder)  # the image side, preprocess.json
        before = set(os.listdir(stage))
        processor.save_pretrained(stage)
        activation, fixed = MODEL_TYPES[spec.arch]
        record.update(files=sorted(set(os.listdir(stage)) - before | {"tokenizer.json"} | set(record["files"])),
                      truncation=True, truncation_side=processor.truncation_side,
                      padding="max_length" if fixed else "longest", padding_side=processor.padding_side,
                      pad_token=processor.pad_token, pad_token_id=processor.pad_token_id,
                      template=TEMPLATE, activation=activation)
        return record

    def model_record(self, module: Any) -> dict[str, Any]:
        """The logit scale (exponentiated, as the forward applies it) and bias of the built model."""
        model = getattr(module, "model", module)
        bias = getattr(model, "logit_bias", None)
        return {"logit_scale": float(model.logit_scale.detach().exp().reshape(-1)[0]),
                "logit_bias": float(bias.detach().reshape(-1)[0]) if bias is not None else 0.0}

    def export_checks(self, stage: Path, record: dict[str, Any], cases: list[Case],
                      references: list[dict[str, np.ndarray]]) -> list[Check]:
        return [_tokenizer_check(stage, record, cases), _scale_check(record, references),
                _towers_alone_check(stage, record, cases, references)]

    # ------------------------------------------------------------ verify

    def agreement(self, spec: ModelSpec, tol: Tolerances) -> ZeroShotAgreement:
        return ZeroShotAgreement(tol)

    def optimization_gate(self, tol: Tolerances) -> Any:
        from zoo.errors import ConfigError

        # the gate compares a graph's first output on one kind of input; this graph has two towers and two inputs
        raise ConfigError("zoo optimize does not judge image-text (zero-shot-image-classification) graphs yet: its "
                          "gate compares one output on one kind of input, and this graph has two towers; use the "
                          "artifact as exported")

    def preprocessor_problems(self, folder: Path, manifest: Any) -> list[str]:
        pp = manifest.preprocess
        problems = super().preprocessor_problems(folder, manifest)
        if "tokenizer.json" not in pp.get("files", []):
            problems.append("tokenizer.json (not listed)")
        if not isinstance(pp.get("logit_scale"), (int, float)) or pp.get("activation") not in ACTIVATIONS:
            problems.append("logit_scale / activation (zero-shot scoring) not recorded")
        return problems

    # ------------------------------------------------------------ runtime

    def runtime_preprocessor(self, folder: Path, manifest: Any) -> ZeroShotPreprocessor:
        return ZeroShotPreprocessor(folder, manifest)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options = super().check_options(options)
        top_k = options.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InputError(f"top_k={top_k!r}; give a positive number of labels to return")
        template = options.get("template")
        if template is not None and (not isinstance(template, str) or "{}" not in template):
            raise InputError(f"template={template!r}; give a prompt with {{}} where the label goes, e.g. "
                             f"'{TEMPLATE}'")
        return {**options, "labels": candidate_labels(options.get("labels"))}

    def runtime_options(self, options: dict[str, Any], model: Any) -> dict[str, Any]:
        """The labels' prompts embedded once per predict call; each batch of images is scored against them."""
        template = options.get("template") or model.manifest.preprocess.get("template") or TEMPLATE
        names = options["labels"]
        prompts = [template.replace("{}", label, 1) for label in names]
        # postprocess takes the artifact's labels as ``labels``: the candidates travel under another name
        return {"candidates": names, "label_embeds": model.embed_text(prompts), "top_k": options.get("top_k")}

    def embed(self, run: Any, preprocessor: Any, kind: str, items: list[Any]) -> np.ndarray:
        """One tower's embeddings [len(items), dim]: the other tower gets an empty batch."""
        if not items:
            raise InputError(f"embed_{kind} got no inputs; give one or more")
        arrays = preprocessor.texts(items) if kind == "text" else preprocessor(items).arrays
        output = "text_embeds" if kind == "text" else "image_embeds"
        return run(arrays)[output]

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Any, labels: tuple[str, ...] | None,
                    manifest: Any, **options: Any) -> list[Any]:
        from zoo.tasks.results import Classification

        names = options["candidates"]
        scores = zero_shot_scores(outputs["image_embeds"], options["label_embeds"], manifest.preprocess)
        top_k = min(options.get("top_k") or len(names), len(names))
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            results.append(Classification(tuple(names[i] for i in order), tuple(float(row[i]) for i in order)))
        return results

    render = Classifier.render  # ranked labels with their scores, as a classifier's

    # ------------------------------------------------------------ data and training

    def builtin_datasets(self) -> dict[str, Any]:
        from zoo.tasks._zero_shot_data import shapes

        return {"shapes": shapes}

    def training_spec(self, spec: ModelSpec, config: Any) -> ModelSpec:
        """The image side as image tasks train it (size, squashed built-in pictures); the text inputs kept."""
        image = super().training_spec(spec, config)
        return dataclasses.replace(image, inputs=(*image.inputs, *spec.inputs[1:]))

    def data_columns(self, table: Any, input_column: str | None, label_column: str | None) -> dict[str, str]:
        from zoo.tasks._classify import LABEL_COLUMNS
        from zoo.tasks.base import choose_column

        image = self.image_column(table, input_column)
        names = list(table.column_names)
        usual = [n for n in LABEL_COLUMNS if n != image]
        if label_column is None and not set(usual) & set(names):
            # an imagefolder with a single sub-folder comes without a label column
            raise DataError(f"no class column among: {', '.join(names)}; give an image folder with one sub-folder per "
                            "class (at least 2; folder names are the classes), or name a column of class names "
                            "with --label-column")
        return {"input": image, "label": choose_column(names, label_column, usual, "class", "--label-column")}

    def read_labels(self, table: Any, column: str, spec: ModelSpec, new_head: bool = False) -> Any:
        from zoo.tasks._zero_shot_data import plan_labels

        return plan_labels(table, column)

    def encode(self, table: Any, columns: dict[str, str], labels: Any, spec: ModelSpec,
               processor: Any, max_length: int, what: str) -> Any:
        """Pictures as image tasks encode them, and each class's caption tokenised once by the model's tokenizer
        (``processor``: this task's ``load_processor``) as predict tokenises its prompts."""
        from zoo.data import encode
        from zoo.tasks._zero_shot_data import ZeroShotExamples

        pp = spec.preprocess
        if pp.crop_mode == "center-floor":  # zoo's runtime name for CLIP's crop; timm's training transform says center
            pp = dataclasses.replace(pp, crop_mode="center")
        prompts = _tokenize(spec, processor, [TEMPLATE.format(name) for name in labels.names])
        return ZeroShotExamples(encode.images(table, columns, labels, pp, what), prompts, MODEL_TYPES[spec.arch][0])

    def training_inputs(self, spec: ModelSpec, batch: dict[str, Any]) -> dict[str, Any]:
        from zoo.tasks._zero_shot_data import PROMPT_PREFIX

        return {"pixel_values": batch["pixel_values"], **{PROMPT_PREFIX + n: batch[PROMPT_PREFIX + n]
                                                          for n in text_names(spec.inputs)}}

    def training_loss(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, int]:
        from zoo.tasks._zero_shot_torch import training_loss

        return training_loss(runner, batch, inputs)

    def eval_batch(self, runner: Any, batch: dict[str, Any], inputs: dict[str, Any],
                   rows: list[bool]) -> tuple[float, int, list[Any]]:
        from zoo.tasks._zero_shot_torch import eval_batch

        return eval_batch(runner, batch, inputs, rows)

    def metrics(self, records: list[Any], labels: tuple[str, ...]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score

        if not records:
            return {"val_accuracy": 0.0}
        return {"val_accuracy": float(accuracy_score([t for t, _ in records], [p for _, p in records]))}


# ---------------------------------------------------------------- scoring (torch-free)


def candidate_labels(labels: Any) -> list[str]:
    """The candidate labels as a list: a list of strings, or one string of comma-separated labels."""
    if labels is None:
        raise InputError("zero-shot classification needs candidate labels: predict(image, labels=['a cat', "
                         "'a dog']), zoo predict --labels 'a cat,a dog', or ?labels=a cat,a dog on zoo serve's "
                         "/predict")
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",")]
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise InputError(f"labels={labels!r}; give a list of strings or one comma-separated string")
    if not labels or any(not x.strip() for x in labels):
        raise InputError(f"labels={list(labels)!r} holds an empty label; give non-empty labels, e.g. 'a cat,a dog'")
    return list(labels)


def zero_shot_logits(image_embeds: np.ndarray, text_embeds: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """The model's logits_per_image from both towers' embeddings: scale * image . text + bias."""
    scale, bias = record.get("logit_scale"), record.get("logit_bias", 0.0)
    if not isinstance(scale, (int, float)) or not isinstance(bias, (int, float)):
        raise ArtifactError("the manifest records no numeric preprocess.logit_scale / logit_bias for a zero-shot "
                            "model; re-export the artifact")
    return (float(scale) * (image_embeds.astype(np.float64) @ text_embeds.astype(np.float64).T)) + float(bias)


def zero_shot_scores(image_embeds: np.ndarray, text_embeds: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """Scores [images, labels]: softmax over the labels (CLIP) or a sigmoid per label (SigLIP)."""
    logits = zero_shot_logits(image_embeds, text_embeds, record)
    activation = record.get("activation")
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    raise ArtifactError(f"preprocess.activation {activation!r} in the manifest; valid: {', '.join(ACTIVATIONS)}")


# ---------------------------------------------------------------- runtime preprocessing


@dataclasses.dataclass(frozen=True)
class ZeroShotBatch:
    arrays: dict[str, np.ndarray]


class ZeroShotPreprocessor:
    """Images -> pixels (with an empty text batch); prompts -> tokens (with an empty image batch)."""

    def __init__(self, folder: Path, manifest: Any):
        from zoo.tasks.preprocess import ImagePreprocessor, TextPreprocessor

        self.images = ImagePreprocessor(folder, manifest)
        self.text = TextPreprocessor(folder, manifest, names=text_names(manifest.inputs))
        self._empty_text = {name: np.zeros((0, 1), dtype=dtype) for name, dtype in self.text.inputs}
        self._empty_pixels = np.zeros((0, self.images.channels, *self.images.size), dtype=self.images.dtype)

    def __call__(self, images: list[Any]) -> ZeroShotBatch:
        return ZeroShotBatch({**self.images(images).arrays, **self._empty_text})

    def texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {self.images.input_name: self._empty_pixels, **self.text(texts).arrays}


# ---------------------------------------------------------------- export helpers


def _image_preprocess(folder: Path, vision: dict[str, Any]) -> Preprocess:
    """The image processor's recipe; CLIP's resize-shorter-side-then-center-crop as transformers crops it.

    CLIP's processor reads a bare number as the shorter side (``size``) and as a square (``crop_size``):
    openai/clip-* folders write both that way.
    """
    pp = read_json(folder / "preprocessor_config.json")
    base = hf_image_preprocess(folder, vision)
    size, crop = pp.get("size"), pp.get("crop_size")
    shorter = size.get("shortest_edge") if isinstance(size, dict) else size
    crop_hw = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    if pp.get("do_center_crop") and isinstance(shorter, int) and all(isinstance(x, int) for x in crop_hw):
        height, width = crop_hw
        return dataclasses.replace(base, input_size=(base.input_size[0], height, width), crop_mode="center-floor",
                                   crop_pct=height / shorter)
    return base


def _tokenize(spec: ModelSpec, tokenizer: Any, prompts: list[str]) -> dict[str, np.ndarray]:
    """The prompts as the pipeline tokenises them: padded to the longest, or (SigLIP) to max_length."""
    fixed = MODEL_TYPES[spec.arch][1]
    encoded = tokenizer(prompts, padding="max_length" if fixed else True, truncation=True,
                        max_length=spec.preprocess.max_length, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in text_names(spec.inputs)}


def _tokenizer_check(stage: Path, record: dict[str, Any], cases: list[Case]) -> Check:
    """tokenizer.json, read by the runtime's preprocessor with the recorded padding, gives the model tokenizer's ids."""
    from zoo.tasks.preprocess import TextPreprocessor

    names = [n for n in cases[0].inputs if n != "pixel_values"]
    try:
        text = TextPreprocessor.from_record(stage, record, [(n, np.int64) for n in names])
    except ArtifactError as exc:
        return Check("tokenizer.json reproduces tokenisation", False, "unreadable", "identical ids", str(exc))
    mismatched = [f"{case.label} {name}" for case in cases for name, got in text(case.texts).arrays.items()
                  if got.shape != case.inputs[name].shape or not np.array_equal(got, case.inputs[name])]
    return Check("tokenizer.json reproduces tokenisation", not mismatched, f"{len(cases)} cases",
                 f"identical ids and masks ({record.get('padding')} padding)", "; ".join(mismatched[:3]))


def _scale_check(record: dict[str, Any], references: list[dict[str, np.ndarray]]) -> Check:
    """The recorded logit scale and bias, applied to torch's embeddings, give torch's own logits_per_image."""
    worst = 0.0
    for reference in references:
        want = reference["logits_per_image"].astype(np.float64)
        got = zero_shot_logits(reference["image_embeds"], reference["text_embeds"], record)
        worst = max(worst, float(np.max(np.abs(got - want) / (1.0 + np.abs(want)))))
    limit = 1e-4
    return Check("logit scale and bias", worst <= limit, f"max rel {worst:.3g}", f"<= {limit:g}",
                 f"scale {record.get('logit_scale'):.6g}, bias {record.get('logit_bias'):.6g}, {len(references)} cases")


def _towers_alone_check(stage: Path, record: dict[str, Any], cases: list[Case],
                        references: list[dict[str, np.ndarray]]) -> Check:
    """Each tower run alone (the other fed an empty batch, as embed_text / embed_images do) gives torch's vectors."""
    import onnxruntime as ort

    from zoo.artifact import MODEL_FILE

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(stage / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    worst, failed = 1.0, []
    for case, reference in zip(cases, references):
        pixels_only = {k: v if k == "pixel_values" else np.zeros((0, 1), v.dtype) for k, v in case.inputs.items()}
        texts_only = {k: np.zeros((0, *v.shape[1:]), v.dtype) if k == "pixel_values" else v
                      for k, v in case.inputs.items()}
        try:
            images = session.run(["image_embeds"], pixels_only)[0]
            texts = session.run(["text_embeds"], texts_only)[0]
        except Exception as exc:  # onnxruntime's own pybind types: a graph that refuses an empty batch
            failed.append(f"{case.label}: {str(exc).strip().splitlines()[-1][:120]}")
            continue
        for name, got in (("image_embeds", images), ("text_embeds", texts)):
            values = cosines(reference[name], got) if got.shape == reference[name].shape else np.array([-1.0])
            worst = min(worst, float(np.nan_to_num(values, nan=-1.0).min(initial=1.0)))
    ok = not failed and worst >= 0.9999
    return Check("each tower alone", ok, f"min cosine {worst:.6f}", ">= 0.9999 with the other batch empty",
                 "; ".join(failed[:2]) or f"{len(cases)} cases")


class ZeroShotAgreement:
    """Per image, the labels ranked by onnxruntime's logits in torch's order (ties within tolerance allowed),
    and every embedding within the cosine tolerance of torch's."""

    def __init__(self, tol: Tolerances):
        self.tol = tol
        self.rows, self.misranked, self.vectors, self.min_cos, self.broken = 0, 0, 0, 1.0, 0

    def add(self, reference: dict[str, np.ndarray], got: dict[str, np.ndarray], case: Case) -> None:
        if any(reference[n].shape != got.get(n, np.empty(0)).shape for n in OUTPUTS):
            self.broken += 1
            return
        for name in ("image_embeds", "text_embeds"):
            values = np.nan_to_num(cosines(reference[name], got[name]), nan=-1.0)
            self.vectors += len(values)
            self.min_cos = min(self.min_cos, float(values.min(initial=1.0)))
        want = reference["logits_per_image"].astype(np.float64)
        for ref_row, got_row in zip(want, got["logits_per_image"]):
            self.rows += 1
            # torch's logits in onnxruntime's order must not rise by more than the tolerance
            ordered = ref_row[np.argsort(-got_row, kind="stable")]
            slack = self.tol.atol + self.tol.rtol * float(np.abs(ref_row).max(initial=0.0))
            if np.any(np.diff(ordered) > slack):
                self.misranked += 1

    def check(self) -> Check:
        ok = not self.broken and self.rows > 0 and not self.misranked and self.min_cos >= self.tol.cosine
        detail = f"{self.rows} images ranked, {self.vectors} vectors"
        detail += f", {self.misranked} ranked differently" if self.misranked else ""
        detail += f", {self.broken} cases of the wrong shape" if self.broken else ""
        return Check("zero-shot ranking", ok, f"min cosine {self.min_cos:.6f}",
                     f"same label order; cosine >= {self.tol.cosine:g}", detail)


TASK = ZeroShotImageClassification()

__all__ = ["TASK", "ZeroShotImageClassification", "candidate_labels", "zero_shot_scores"]
