"""OpenAI-compatible speech to text for automatic-speech-recognition artifacts (Whisper and CTC heads).

    POST /v1/audio/transcriptions    multipart: file (the recording), model (a served name),
                                     language (optional, Whisper), response_format json | text |
                                     verbose_json (Whisper), timestamp_granularities[] segment

What OpenAI's clients send (``client.audio.transcriptions.create(model=..., file=...)``) and read
back: ``{"text": ...}``, the text alone with ``response_format=text``, or with ``verbose_json`` (a
Whisper model decoding its timestamp tokens) the language, the duration and the segments with their
start and end seconds, text and token ids. The recording goes through the model's own batcher, as a
/predict upload does. ``prompt``, word timestamps and the subtitle formats (srt, vtt) are refused, never
ignored; so are the segment fields zoo does not compute (avg_logprob, compression_ratio, no_speech_prob:
left out). ``temperature`` 0 (greedy, what zoo runs) is accepted. Errors have OpenAI's shape
(``completions.openai_error``).
"""

from __future__ import annotations

import io
from typing import Any

import anyio
from fastapi import FastAPI, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from zoo.errors import InputError
from zoo.serve.completions import ApiError
from zoo.serve.models import PredictJob
from zoo.tasks.automatic_speech_recognition import AutomaticSpeechRecognition

PATH = "/v1/audio/transcriptions"
TASK = AutomaticSpeechRecognition.name
FORMATS = ("json", "text", "verbose_json")
# OpenAI fields that would change the answer and that zoo does not implement
UNSUPPORTED = ("prompt", "chunking_strategy", "include[]")
GRANULARITIES = ("timestamp_granularities[]", "timestamp_granularities")


def add_transcription_routes(app: FastAPI, models: dict[str, Any]) -> None:
    @app.post(PATH, tags=["openai"])
    async def transcriptions(request: Request) -> Response:
        """The words spoken in ``file`` (OpenAI's audio transcriptions API)."""
        form = await _form(request)
        served = _model(models, form.get("model"))
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ApiError("'file' is required: the recording, uploaded as a multipart file", param="file")
        options = _options(served, form)
        data = await file.read()
        await anyio.to_thread.run_sync(_check_audio, file.filename or "file", data)
        clip = {"bytes": data, "path": file.filename or "file"}
        try:
            [result] = await served.raw.submit(PredictJob([clip], options), rows=1)
        except InputError as exc:
            raise ApiError(str(exc)) from None
        fmt = form.get("response_format", "json")
        if fmt == "text":
            return Response(result.text, media_type="text/plain; charset=utf-8")
        if fmt == "verbose_json":
            return Response(_json(_verbose(result)), media_type="application/json")
        return Response(_json({"text": result.text}), media_type="application/json")


def _verbose(result: Any) -> dict[str, Any]:
    """OpenAI's verbose transcription: what zoo knows of it (no log-probabilities or compression ratios)."""
    segments = [{"id": i, "seek": 0, "start": round(s.start, 2), "end": round(s.end, 2), "text": s.text,
                 "tokens": list(s.token_ids), "temperature": 0.0} for i, s in enumerate(result.segments)]
    return {"task": "transcribe", "language": result.language, "duration": round(result.seconds, 4),
            "text": result.text, "segments": segments}


async def _form(request: Request) -> Any:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError("send the recording as multipart/form-data with fields 'file' and 'model'")
    try:
        return await request.form()
    except Exception as exc:  # python-multipart's parse errors: the body is not valid multipart
        raise ApiError(f"the multipart body cannot be read ({exc})") from None


def _model(models: dict[str, Any], name: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ApiError("'model' is required: the name of a served speech recognition model", param="model")
    if name not in models:
        raise ApiError(f"model '{name}' is not served here; served: {', '.join(sorted(models)) or 'none'} "
                       "(GET /v1/models lists them)", status=404, param="model", code="model_not_found")
    served = models[name]
    if served.task != TASK:
        raise ApiError(f"model '{name}' is a {served.task} model; transcriptions need an {TASK} artifact",
                       param="model")
    return served


def _options(served: Any, form: Any) -> tuple[tuple[str, Any], ...]:
    given = [name for name in UNSUPPORTED if form.get(name)]
    if given:
        raise ApiError(f"{given[0]} is not supported by zoo serve; leave it out (supported: file, model, language, "
                       "response_format json, text or verbose_json, timestamp_granularities segment, temperature 0)",
                       param=given[0])
    fmt = form.get("response_format", "json")
    if fmt not in FORMATS:
        raise ApiError(f"response_format '{fmt}' is not supported; give json, text or verbose_json",
                       param="response_format")
    whisper = served.model.manifest.preprocess.get("features") == "whisper"
    granularities = [g for name in GRANULARITIES for g in form.getlist(name)]
    wrong = [g for g in granularities if g != "segment"]
    if wrong:
        raise ApiError(f"timestamp_granularities '{wrong[0]}' is not supported; give segment (with "
                       "response_format verbose_json)", param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise ApiError("timestamp_granularities needs response_format verbose_json (OpenAI's rule)",
                       param="timestamp_granularities")
    if fmt == "verbose_json" and not whisper:
        raise ApiError("response_format verbose_json: segments with timestamps need a Whisper model; this CTC model "
                       "gives json or text", param="response_format")
    timing = (("timestamps", True),) if fmt == "verbose_json" else ()
    temperature = form.get("temperature")
    if temperature not in (None, "", "0", "0.0"):
        raise ApiError(f"temperature {temperature}: zoo transcribes greedily; leave it out or send 0",
                       param="temperature")
    language = form.get("language")
    if not language:
        return timing
    if not whisper:
        raise ApiError("language: this CTC model transcribes the one language it was trained on; leave it out",
                       param="language")
    return (("language", str(language)), *timing)


def _check_audio(name: str, data: bytes) -> None:
    from zoo.tasks._audio_io import audio_library

    soundfile = audio_library("soundfile")
    try:
        soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ApiError(f"'{name}' is not audio that soundfile can read ({reason}); send WAV, FLAC, OGG, Opus, "
                       "AIFF or MP3", param="file") from None


def _json(content: Any) -> str:
    import json

    return json.dumps(content, separators=(",", ":"))
