"""``zoo serve`` and ``zoo triton``: artifacts over HTTP (Open Inference Protocol v2), or to a Triton repository.

    zoo serve artifacts/minilm artifacts/digits --port 8000 --max-batch-size 32 --max-wait-ms 5
    zoo serve embed=artifacts/minilm                # serve it under another name
    zoo triton artifacts/minilm model-repo          # model-repo/minilm/{config.pbtxt, 1/model.onnx}
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from zoo.cli.app import app
from zoo.cli.runtime import EngineOption, engine_name


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command("serve")
def serve(
    artifacts: Annotated[list[str], typer.Argument(help="Artifact folders, or NAME=FOLDER to choose the URL name "
                                                   "(default: the folder's name).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="Most inputs one onnxruntime "
                                                "call takes; 1 turns dynamic batching off.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="Longest a request waits for "
                                               "others to share its batch.")] = 5.0,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with every model loaded.")] = 1,
    instances: Annotated[int, typer.Option(min=1, help="Batches of one model that run at the same time.")] = 2,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime intra-op threads per batch "
                                                "(default: the cores divided by --instances).")] = None,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Largest request body "
                                               "accepted, in MiB; larger ones get 413.")] = 32.0,
    generations: Annotated[int, typer.Option(min=1, help="Text generations of one model that run at the same "
                                             "time (OpenAI routes).")] = 2,
    generation_queue: Annotated[int, typer.Option("--generation-queue", min=0, help="Text generations that "
                                                  "wait beyond those; more get 429.")] = 16,
    no_hash_check: Annotated[bool, typer.Option("--no-hash-check", help="Check file sizes only, not sha256 "
                                                "(faster start).")] = False,
    log_level: Annotated[LogLevel, typer.Option(help="Server log level (access lines are info).")] = LogLevel.info,
    engine: EngineOption = None,
) -> None:
    """Serve artifacts over HTTP: Open Inference Protocol v2 (/v2/...) and raw-input predictions (/v1/...)."""
    from zoo.serve.models import ServeSettings
    from zoo.serve.server import serve as run_server

    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             max_body_bytes=int(max_body_mb * (1 << 20)), instances=instances, threads=threads,
                             check_hashes=not no_hash_check, generations=generations,
                             generation_queue=generation_queue, engine=engine_name(engine))
    run_server(artifacts, settings, host=host, port=port, workers=workers, log_level=log_level.value)


@app.command("triton")
def triton(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    repository: Annotated[Path, typer.Argument(help="The model repository folder (created if needed).")],
    name: Annotated[str | None, typer.Option(help="Model name in the repository (default: the folder's).")] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=0, help="Triton's max_batch_size; "
                                                "0 turns its batching off.")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="Triton's dynamic batching "
                                               "queue delay.")] = 5.0,
) -> None:
    """Write a Triton / KServe model repository entry: NAME/config.pbtxt and NAME/1/model.onnx."""
    from zoo.serve.triton import write_model_repository

    entry = write_model_repository(artifact, repository, name=name, max_batch_size=max_batch_size,
                                   max_queue_delay_us=round(max_wait_ms * 1000))
    typer.echo(f"wrote {entry.path} (config.pbtxt, 1/model.onnx); run: tritonserver --model-repository "
               f"{repository}")
