"""``zoo predict`` and ``zoo bench``: run an exported artifact without torch.

    zoo predict artifacts/sst2 "I loved it" "Dreadful" --top-k 2
    zoo predict artifacts/resnet cat.jpg dog.png --json
    zoo predict artifacts/llama "The capital of France is" --max-new-tokens 32   # streams the text
    zoo bench artifacts/minilm --batch-sizes 1,8 --iterations 50 --vs-torch
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from zoo.cli.app import app, out_console
from zoo.cli.chat import (MaxNewTokens, RepetitionPenalty, Seed, Stop, Temperature, TopP, check_flags,
                          generation_options, print_stream, terminal_write)
from zoo.errors import ConfigError

_PROVIDER_HELP = "onnxruntime execution provider, e.g. cpu or cuda (repeat in order of preference)."
_UNVERIFIED_HELP = "Load an artifact that failed verification (kept by 'zoo export --keep-failed')."


class EngineName(str, Enum):
    onnxruntime = "onnxruntime"
    openvino = "openvino"


EngineOption = Annotated[EngineName | None, typer.Option(
    "--engine", help="Run on onnxruntime or OpenVINO (pip install 'zoo-toolkit\\[openvino]'); default: the engine "
                     "the artifact's manifest names (onnxruntime unless 'zoo optimize' chose OpenVINO).")]


def engine_name(engine: EngineName | None) -> str | None:
    return engine.value if engine is not None else None


def _load(artifact: Path, **options: Any) -> Any:
    """zoo.load (lazily imported); its warnings print as one 'warning:' line through zoo.cli.main."""
    from zoo.runtime import load

    return load(artifact, **options)


@app.command("predict")
def predict(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    inputs: Annotated[list[str] | None, typer.Argument(help="Texts (text models; prompts for text generation); "
                                                            "files, directories or globs (image and audio models); "
                                                            "JSON objects (question answering); @FILE reads one "
                                                            "input per line, - reads stdin.")] = None,
    text: Annotated[bool, typer.Option("--text", help="Take every INPUT as the text itself, even one that names "
                                                      "a file or starts with @ (text models).")] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=0, help="Labels to show per input "
                                              "(classifiers; default 1); sample from the k likeliest tokens "
                                              "(text generation; 0: no limit).")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Keep detections scoring at least this (object detection; default: the artifact's).")] = None,
    labels: Annotated[str | None, typer.Option(
        help="Candidate labels, comma-separated (zero-shot image classification), e.g. 'a cat,a dog'.")] = None,
    template: Annotated[str | None, typer.Option(
        help="Prompt around each label, {} marking its place (zero-shot; default: the artifact's, "
             "'This is a photo of {}.').")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Where to draw the predictions (object detection: boxes and labels): a .png/.jpg file for one "
             "input, else a folder.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Inputs per onnxruntime call.")] = 32,
    provider: Annotated[list[str] | None, typer.Option("--provider", metavar="NAME", help=_PROVIDER_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results here, one row per input: .jsonl (JSON "
                                                  "lines) or .csv.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    no_hash_check: Annotated[bool, typer.Option("--no-hash-check",
                                                help="Check file sizes only, not sha256 (faster start).")] = False,
    allow_unverified: Annotated[bool, typer.Option("--allow-unverified", help=_UNVERIFIED_HELP)] = False,
    engine: EngineOption = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    stop: Stop = None,
    seed: Seed = None,
    num_beams: Annotated[int | None, typer.Option(min=1, help="Beam search width (text-to-text generation; "
                                                  "default: the model's, 1 is greedy).")] = None,
    length_penalty: Annotated[float | None, typer.Option(
        help="Beam search: the exponent of the length a finished hypothesis' score is divided by (text-to-text "
             "generation; default: the model's).")] = None,
    no_repeat_ngram_size: Annotated[int | None, typer.Option(
        min=0, help="Never repeat an n-gram of this size (text-to-text generation; 0: off).")] = None,
    tgt_lang: Annotated[str | None, typer.Option(
        help="Target language code the output starts with, e.g. ro_RO (multilingual translation: mBART).")] = None,
    language: Annotated[str | None, typer.Option(
        help="Spoken language code, e.g. en, de (speech recognition: Whisper; default: the model's, else "
             "detected).")] = None,
    asr_task: Annotated[str | None, typer.Option(
        "--task", help="transcribe (the words as spoken) or translate (into English) (speech recognition: "
                       "Whisper; default: the model's).")] = None,
    timestamps: Annotated[bool, typer.Option(
        "--timestamps", help="Segments with start and end seconds (speech recognition: Whisper).")] = False,
    question: Annotated[str | None, typer.Option(help="The question (question answering; with --context).")] = None,
    context: Annotated[str | None, typer.Option(help="The text to find the answer in (question answering).")] = None,
) -> None:
    """Run an exported model on raw inputs and print (or write) its predictions.

    A text-generation model continues each prompt; one prompt streams its text as it is generated
    (--json and --out give the whole result: token ids, counts, finish reason).
    """
    import sys

    from zoo.runtime.inputs import ResultWriter, gather_inputs
    from zoo.tasks import get_task

    writer = ResultWriter(out) if out is not None else None  # a bad --out fails before the model loads
    model = _load(artifact, check_hashes=not no_hash_check, providers=provider or None,
                  allow_unverified=allow_unverified, engine=engine_name(engine))
    task = get_task(model.task)
    options = generation_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed)
    options.update({"threshold": threshold} if threshold is not None else {})
    options.update({k: v for k, v in (("num_beams", num_beams), ("length_penalty", length_penalty),
                                      ("no_repeat_ngram_size", no_repeat_ngram_size), ("tgt_lang", tgt_lang),
                                      ("language", language), ("task", asr_task))
                    if v is not None})
    options.update({"timestamps": True} if timestamps else {})
    options.update({k: v for k, v in (("labels", labels), ("template", template)) if v is not None})
    check_flags(task, options)
    if top_k == 0 and not task.generates:
        raise ConfigError("--top-k 0: a classifier shows at least one label; give --top-k 1 or more "
                          "(0, no limit, is for sampling a text-generation model)")
    items = _pair_input(task, question, context)
    if inputs or not items:
        items += gather_inputs(list(inputs or []), task, sys.stdin, literal=text)
    results: list[Any] = []
    if task.generates and len(items) == 1 and not as_json and writer is None and save is None:
        print_stream(model.stream(items[0], **options), terminal_write)
        return
    if writer is not None:
        def take(inputs: list[str], batch: list[Any]) -> None:
            writer.write(inputs, batch)
            if save is not None:  # pictures need every result; rows alone stream
                results.extend(batch)

        _write_all(writer, lambda: _predict_all(model, items, batch_size, options, take))
        typer.echo(f"wrote {writer.rows} predictions to {out}")
        for path in task.save_pictures(items, results, save) if save is not None else []:
            typer.echo(f"saved {path}")
        return
    _predict_all(model, items, batch_size, options, lambda _inputs, batch: results.extend(batch))
    saved = task.save_pictures(items, results, save) if save is not None else []
    if as_json:
        typer.echo(json.dumps([{"input": i, **r.to_dict()} for i, r in zip(items, results)], indent=2))
        return
    from rich.markup import escape

    title = f"{escape(model.manifest.name)} ({model.task})"
    console = out_console()
    console.print(task.render(title, items, results))
    for path in saved:
        console.print(f"saved {escape(str(path))}")


def _pair_input(task: Any, question: str | None, context: str | None) -> list[Any]:
    """The input --question and --context make, for a task whose inputs are named texts."""
    if question is None and context is None:
        return []
    if not task.input_fields:
        raise ConfigError(f"--question and --context are for question answering; this {task.name} model takes "
                          f"{task.expects}: give them as arguments")
    if question is None or context is None:
        raise ConfigError("--question and --context go together: give both (or JSON inputs with question and "
                          "context)")
    return [dict(zip(task.input_fields, (question, context)))]


def _write_all(writer: Any, run: Callable[[], None]) -> None:
    """Run with the result file open; one that fails before its first row (a bad option, a prompt past the
    context length) leaves no file behind."""
    made = [folder for folder in (writer.path.parent, *writer.path.parent.parents) if not folder.exists()]
    try:
        with writer:
            run()
    except BaseException:
        if writer.rows == 0:
            writer.path.unlink(missing_ok=True)
            for folder in made:  # innermost first: the folders the writer made for the file
                folder.rmdir()
        raise


def _predict_all(model: Any, items: list[str], batch_size: int, options: dict[str, Any],
                 take: Callable[[list[str], list[Any]], None]) -> None:
    """Predict batch by batch, handing each batch's results on; a progress bar when there is more than one batch."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    many = len(items) > batch_size
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True, disable=not many) as bar:
        task = bar.add_task("predict", total=len(items))
        start = 0
        for results in model.predict_batches(items, batch_size=batch_size, **options):
            take(items[start:start + len(results)], results)
            start += len(results)
            bar.update(task, completed=start)


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes '{text}' is not a comma-separated list of positive integers; "
                          "write e.g. --batch-sizes 1,8,32")
    return sizes


@app.command("bench")
def bench(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder written by 'zoo export'.")],
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,8",
    iterations: Annotated[int, typer.Option("--iterations", "-n", min=1, help="Timed runs per batch size.")] = 50,
    vs_torch: Annotated[bool, typer.Option("--vs-torch", help="Also time the source model in eager PyTorch "
                                           "(needs zoo-toolkit\\[train]).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads for both "
                                                "engines (default: each engine's own).")] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", metavar="NAME", help=_PROVIDER_HELP)] = None,
    allow_unverified: Annotated[bool, typer.Option("--allow-unverified", help=_UNVERIFIED_HELP)] = False,
    engine: EngineOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Latency (p50/p90/p99) and throughput of an artifact per batch size, after warm-up.

    Text models run real sentences padded to the longest in each batch; the table shows the input shape
    (batch x sequence length) each batch size ran at.
    """
    from zoo.runtime.bench import bench as run_bench

    sizes = _batch_sizes(batch_sizes)
    model = _load(artifact, threads=threads, providers=provider or None, allow_unverified=allow_unverified,
                  engine=engine_name(engine))
    report = run_bench(model, batch_sizes=sizes, iterations=iterations, vs_torch=vs_torch, threads=threads)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_bench(report)


def _print_bench(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(report.name)} ({report.task}) on {', '.join(report.providers)}, "
                        f"{report.iterations} runs")
    for column in ("batch", "input shape", "engine", "p50 ms", "p90 ms", "p99 ms", "inputs/s", "speed-up"):
        table.add_column(column, justify="left" if column in ("engine", "input shape") else "right")
    for t in report.timings:
        ratio = report.speedup(t.batch_size) if t.engine != "torch" else None
        table.add_row(str(t.batch_size), escape(report.shape_text(t.batch_size)), t.engine, f"{t.p50_ms:.2f}",
                      f"{t.p90_ms:.2f}", f"{t.p99_ms:.2f}", f"{t.throughput:.1f}", f"{ratio:.2f}x" if ratio else "")
    console = out_console()
    console.print(table)
    if report.torch_note:
        console.print(f"torch: {escape(report.torch_note)}; speed-up = torch p50 / artifact p50")
