"""The HTTP app: Open Inference Protocol v2 routes, the task-level /predict route, OpenAI's routes, /metrics.

    app = create_app(load_models(["artifacts/minilm"], settings), settings)

Routes (``{name}`` is a served model; ``/versions/1`` may be added to every /v2/models route):

    GET  /v2                           server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}             inputs and outputs: names, datatypes, shapes (-1 = variable)
    GET  /v2/models/{name}/ready
    POST /v2/models/{name}/infer       tensors in, tensors out (JSON, or the binary tensor data extension)
    POST /v1/models/{name}/predict     raw texts (JSON) or image files (multipart) in, typed results out
    GET  /v1/models                    what is served (OpenAI's list), with tasks and labels
    POST /v1/completions               OpenAI-compatible text generation (text-generation artifacts;
    POST /v1/chat/completions          zoo.serve.completions)
    POST /v1/audio/transcriptions      OpenAI-compatible speech to text (automatic-speech-recognition
                                       artifacts; zoo.serve.transcriptions)
    GET  /metrics                      Prometheus
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response

from zoo.errors import InputError, ZooError
from zoo.serve.completions import PATHS as OPENAI_PATHS
from zoo.serve.completions import ApiError, GenerationPool, add_openai_routes, openai_error
from zoo.serve.errors import ModelNotFound, RequestError, error_body, status_of
from zoo.serve.inputs import openapi_body, predict_rows, reader_for
from zoo.serve.metrics import ServerMetrics
from zoo.serve.middleware import ServeMiddleware
from zoo.serve.models import VERSION, PredictJob, ServedModel, ServeSettings
from zoo.serve.protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    encode_response,
    parse_request,
)
from zoo.serve.transcriptions import PATH as TRANSCRIPTIONS_PATH
from zoo.serve.transcriptions import add_transcription_routes
from zoo.tasks import get_task

# Bodies above this are parsed and encoded in a worker thread, so that a large tensor never stalls the loop.
_INLINE_BYTES = 64 << 10
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415)}


def create_app(models: Sequence[ServedModel], settings: ServeSettings) -> FastAPI:
    """A FastAPI app serving ``models`` (already loaded); batchers start and stop with the app's lifespan."""
    from zoo import __version__

    served = {m.name: m for m in models}
    metrics = ServerMetrics()
    pools = {m.name: _generation_pool(m, settings, metrics) for m in models if get_task(m.task).generates}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for model in served.values():
            model.start(metrics)
        yield
        # uvicorn runs this after the in-flight requests have been answered (graceful shutdown)
        for model in served.values():
            await model.stop()
        for pool in pools.values():
            pool.shutdown()

    app = FastAPI(title="zoo serve", version=__version__, lifespan=lifespan,
                  description="Open Inference Protocol v2 and task-level predictions for zoo artifacts.")
    app.state.models, app.state.metrics, app.state.settings = served, metrics, settings
    _add_error_handlers(app)
    _add_protocol_routes(app, served, __version__)
    _add_task_routes(app, served)
    add_openai_routes(app, pools, served)
    add_transcription_routes(app, served)
    app.add_middleware(ServeMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _generation_pool(model: ServedModel, settings: ServeSettings, metrics: ServerMetrics) -> GenerationPool:
    # the artifact's own decode loop (ExportedModel builds it; the options are checked per request)
    return GenerationPool(model.name, model.model.generator(), settings.generations, settings.generation_queue,
                          on_active=metrics.queue_observer(model.name, "generate"),
                          on_end=metrics.generation_observer(model.name))


def _model(served: dict[str, ServedModel], name: str, version: str | None = None) -> ServedModel:
    if name not in served:
        raise ModelNotFound(name, sorted(served))
    if version is not None and version != VERSION:
        raise RequestError(f"model '{name}' has only version {VERSION}; got version '{version}'", status=404)
    return served[name]


def _add_protocol_routes(app: FastAPI, served: dict[str, ServedModel], version: str) -> None:
    @app.get("/v2", response_model=ServerMetadata, tags=["v2"])
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="zoo", version=version, extensions=EXTENSIONS)

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> Response:
        return Response(status_code=200)  # every model was loaded before the server took its first request

    @app.get("/v2/models/{name}", response_model=ModelMetadata, responses=_ERRORS, tags=["v2"])
    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_ERRORS,
             tags=["v2"])
    async def model_metadata(name: str, version: str | None = None) -> ModelMetadata:
        return _model(served, name, version).metadata()

    @app.get("/v2/models/{name}/ready", responses=_ERRORS, tags=["v2"])
    @app.get("/v2/models/{name}/versions/{version}/ready", responses=_ERRORS, tags=["v2"])
    async def model_ready(name: str, version: str | None = None) -> Response:
        _model(served, name, version)
        return Response(status_code=200)

    infer_docs: dict[str, Any] = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}}}

    @app.post("/v2/models/{name}/infer", response_model=InferenceResponse, responses=_ERRORS,
              openapi_extra=infer_docs, tags=["v2"])
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
              responses=_ERRORS, openapi_extra=infer_docs, tags=["v2"])
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        model = _model(served, name, version)
        body = await request.body()  # inflated by ServeMiddleware when the client compressed it
        parsed, tensors = await _maybe_in_thread(len(body), parse_request, body, request.headers.get(HEADER_LENGTH))
        wanted = [o.name for o in parsed.outputs or []]
        unknown = [n for n in wanted if n not in model.output_names()]
        if unknown:
            raise RequestError(f"requested output(s) {', '.join(unknown)} do not exist; model '{name}' has "
                               f"{', '.join(model.output_names())}")
        feed, rows = model.checked_feed(tensors)
        assert model.tensors is not None  # started by the lifespan
        outputs = await model.tensors.submit(feed, rows)
        outputs = {n: outputs[n] for n in (wanted or model.output_names())}
        size = sum(a.nbytes for a in outputs.values())
        content, json_length = await _maybe_in_thread(size, encode_response, name, parsed, outputs)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})


def _add_task_routes(app: FastAPI, served: dict[str, ServedModel]) -> None:
    @app.post("/v1/models/{name}/predict", responses=_ERRORS, openapi_extra={"requestBody": openapi_body()},
              tags=["v1"])
    async def predict(name: str, request: Request,
                      top_k: int | None = Query(None, ge=1, le=1000, description="labels per input (classifiers)"),
                      threshold: float | None = Query(None, ge=0, le=1,
                                                      description="minimum score (object detection)"),
                      labels: str | None = Query(None, max_length=65536, description="candidate labels, "
                                                 "comma-separated (zero-shot image classification)"),
                      template: str | None = Query(None, max_length=1024, description="prompt around each "
                                                   "label, {} marking its place (zero-shot)"),
                      max_new_tokens: int | None = Query(None, ge=1, le=4096, description="output tokens at most "
                                                         "(text-to-text generation)"),
                      num_beams: int | None = Query(None, ge=1, le=64, description="beam search width "
                                                    "(text-to-text generation)"),
                      tgt_lang: str | None = Query(None, max_length=64, description="target language code "
                                                   "(multilingual translation: mBART)"),
                      language: str | None = Query(None, max_length=32, description="spoken language code "
                                                   "(speech recognition: Whisper; default: the model's, else "
                                                   "detected)"),
                      task: str | None = Query(None, max_length=16, description="transcribe or translate "
                                               "(speech recognition: Whisper)"),
                      timestamps: bool | None = Query(None, description="segments with start and end seconds "
                                                      "(speech recognition: Whisper)")) -> Response:
        """Raw inputs to typed results, as ``zoo predict --json`` prints them."""
        model = _model(served, name)
        given = {"top_k": top_k, "threshold": threshold, "labels": labels, "template": template,
                 "max_new_tokens": max_new_tokens, "num_beams": num_beams, "tgt_lang": tgt_lang,
                 "language": language, "task": task, "timestamps": timestamps}
        options = tuple(sorted((k, v) for k, v in given.items() if v is not None))
        try:
            get_task(model.task).check_options(dict(options))
        except InputError as exc:
            raise RequestError(str(exc)) from None
        labels, inputs = await reader_for(model.task)(request, app.state.settings.max_body_bytes)
        assert model.raw is not None  # started by the lifespan
        results = await model.raw.submit(PredictJob(inputs, options), rows=len(inputs))
        return _json(predict_rows(labels, results))

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        content, media_type = app.state.metrics.render()
        return Response(content, media_type=media_type)


async def _maybe_in_thread(size: int, function: Any, *args: Any) -> Any:
    if size <= _INLINE_BYTES:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)


def _json(content: Any, status: int = 200) -> Response:
    # json.dumps, not JSONResponse: a NaN in a model's output must not turn an answer into a 500
    return Response(json.dumps(content, separators=(",", ":")), status_code=status, media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    def answer(request: Request, status: int, message: str, exc: Exception | None = None) -> Response:
        if request.url.path in (*OPENAI_PATHS, TRANSCRIPTIONS_PATH):  # OpenAI's clients read their own error object
            return openai_error(status, message, exc)
        return _json({"error": message}, status)

    async def on_error(request: Request, exc: Exception) -> Response:
        return answer(request, status_of(exc), error_body(exc)["error"], exc)

    async def on_http(request: Request, exc: HTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = (f"{request.method} {request.url.path} is not a route of this server; the routes are "
                       "listed at GET /openapi.json (and /docs)")
        return answer(request, exc.status_code, message)

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path in OPENAI_PATHS:
            return openai_error(400, *_first_problem(exc))
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        return _json({"error": f"bad request parameters ({problems})"}, 400)

    app.add_exception_handler(ZooError, on_error)  # 4xx: the client's mistake, answered by ExceptionMiddleware
    app.add_exception_handler(Exception, on_error)  # anything else: a 500 with one line, never a traceback
    app.add_exception_handler(HTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]


def _first_problem(exc: RequestValidationError) -> tuple[str, RequestError]:
    """One line for the first thing wrong with an OpenAI request body, and the parameter it names."""
    error = exc.errors()[0]
    param = ".".join(map(str, error["loc"][1:])) or None
    if error["type"] == "json_invalid":
        message, param = f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})", None
    elif error["type"] == "missing":
        message = f"'{param}' is required (see the OpenAI API reference for this route's fields)"
    else:
        message = f"'{param}': {error['msg']}; got {error.get('input')!r}"
    return message, ApiError(message, param=param)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the protocol's request models, which the infer route reads by hand."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    request_schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(request_schema.pop("$defs", {}))
    components["InferenceRequest"] = request_schema
    app.openapi_schema = schema
    return schema
