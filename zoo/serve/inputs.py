"""Raw inputs of the task-level endpoint ``POST /v1/models/{name}/predict``: one reader per modality.

A reader turns the HTTP request into ``(labels, inputs)``: what each input is
called in the answer (the text itself, an upload's file name) and what
``ExportedModel.predict`` takes (strings, PIL images, audio bytes). A new modality
is one more reader in ``READERS``; which reader a model needs comes from its task.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from zoo.serve.errors import RequestError

Reader = Callable[[Request, int], Awaitable[tuple[list[str], list[Any]]]]
MAX_FILES = 256


class TextPredictRequest(BaseModel):
    # question answering takes records of named texts: {"question": ..., "context": ...}
    inputs: list[str | dict[str, str]] = Field(min_length=1, description="the texts to run the model on (question "
                                                                         "answering: question/context objects)")


async def text_inputs(request: Request, max_bytes: int) -> tuple[list[Any], list[Any]]:
    """``{"inputs": ["text", ...]}`` (or ``[{"question": ..., "context": ...}, ...]``) as JSON."""
    body = await request.body()
    if not _is_json(request):
        raise RequestError(f"this text model's /predict takes JSON {{\"inputs\": [\"text\", ...]}}, sent as "
                           f"Content-Type: application/json (got '{request.headers.get('content-type', 'none')}')",
                           status=415)
    try:
        texts = TextPredictRequest.model_validate_json(body).inputs
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(map(str, problem["loc"])) or "body"
        raise RequestError(f"malformed predict request ({where}: {problem['msg']}); send JSON "
                           "{\"inputs\": [\"text\", ...]}") from None
    return texts, list(texts)


async def image_inputs(request: Request, max_bytes: int) -> tuple[list[str], list[Any]]:
    """One or more image files uploaded as multipart/form-data (any field name, e.g. ``files``)."""
    files = await _uploads(request, max_bytes, "image", "cat.jpg")
    images = await anyio.to_thread.run_sync(_decode_images, files)
    return [name for name, _ in files], images


async def audio_inputs(request: Request, max_bytes: int) -> tuple[list[str], list[Any]]:
    """One or more audio files (WAV, FLAC, OGG ...) uploaded as multipart/form-data.

    Only the headers are read here, so that a file that is not audio is refused
    before it joins a batch; the model reads the samples it uses (resampled,
    truncated to its window) from the bytes, as it reads a file.
    """
    files = await _uploads(request, max_bytes, "audio", "clip.wav")
    await anyio.to_thread.run_sync(_check_audio, files)
    return [name for name, _ in files], [{"bytes": data, "path": name} for name, data in files]


async def _uploads(request: Request, max_bytes: int, kind: str, example: str) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file in a multipart/form-data body."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(f"this {kind} model's /predict takes {kind} files as multipart/form-data, e.g. "
                           f"curl -F files=@{example} URL", status=415)
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=max_bytes)
    except RequestError:  # the body itself was refused as it arrived (size, Content-Encoding): keep that answer
        raise
    except Exception as exc:  # python-multipart / starlette parse errors: the body is not valid multipart
        raise RequestError(f"the multipart body cannot be read ({exc})") from None
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise RequestError(f"no file in the multipart body; upload {kind} files, e.g. "
                               f"curl -F files=@{example} URL")
        return [(u.filename or f"file-{i}", await u.read()) for i, u in enumerate(uploads)]
    finally:
        await form.close()


def _check_audio(files: list[tuple[str, bytes]]) -> None:
    from zoo.tasks._audio_io import audio_library

    soundfile = audio_library("soundfile")
    for name, data in files:
        try:
            soundfile.info(io.BytesIO(data))
        except (soundfile.LibsndfileError, RuntimeError, EOFError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RequestError(f"upload '{name}' is not audio that soundfile can read ({reason}); send WAV, "
                               "FLAC, OGG, Opus, AIFF or MP3") from None


def _decode_images(files: list[tuple[str, bytes]]) -> list[Any]:
    from PIL import Image

    images = []
    for name, data in files:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: a truncated or fake file fails here, not inside a batch
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise RequestError(f"upload '{name}' is not an image Pillow can decode ({exc}); send a PNG, JPEG, "
                               "or another format Pillow reads") from None
        images.append(image)
    return images


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() in ("application/json", "")


# One reader per modality; the task says which modality its raw inputs are (zoo.tasks).
READERS: dict[str, Reader] = {"text": text_inputs, "image": image_inputs, "audio": audio_inputs}


def reader_for(task: str) -> Reader:
    from zoo.tasks import get_task

    modality = get_task(task).modality
    if modality not in READERS:
        raise RequestError(f"/predict does not take raw inputs for task '{task}' yet; use the tensor endpoint "
                           "POST /v2/models/NAME/infer", status=400)
    return READERS[modality]


def predict_rows(labels: list[str], results: list[Any]) -> list[dict[str, Any]]:
    """What ``zoo predict --json`` prints: one object per input, its name first."""
    return [{"input": label, **result.to_dict()} for label, result in zip(labels, results)]


def openapi_body() -> dict[str, Any]:
    """The request body of /predict for the OpenAPI schema: JSON texts, or multipart image or audio files."""
    return {"required": True, "content": {
        "application/json": {"schema": TextPredictRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    }}

