"""Dynamic batching: concurrent requests for one model become one onnxruntime call.

A request's work item waits in an asyncio queue. Once one of the model's
``instances`` is free, the batcher's loop takes the first waiting item and every
item already waiting, up to ``max_batch_size`` rows; while another batch is still
running it also waits up to ``max_wait_s`` for more (when nothing runs, waiting
would only add latency to an idle machine). It runs the batch in a worker
thread (the event loop never waits on onnxruntime) and hands every caller its
own slice of the result.
Several instances let one batch run while the next one runs or gathers: on a
CPU, two single-threaded onnxruntime calls side by side do more work than one
call spread over two threads. An item is
queued only once its request body has been read in full, so a slow client
never holds up a batch.

How text tensors of different lengths share a batch is decided by
``run_tensor_batch`` below: the items are sorted by length and cut into calls
whose padding adds at most ``MAX_PADDING`` of their real tokens; within a call,
the inputs the server knows how to pad (token ids, attention mask, token type
ids) are padded to the longest item as the tokenizer itself would pad them, and
per-token outputs are cut back to each item's own length. Items whose other
shapes differ run as separate calls within the same turn.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Item]):
    item: Item
    rows: int
    future: asyncio.Future[Any]


@dataclass
class BatchStats:
    """What one batch did, for the metrics."""

    rows: int
    requests: int
    seconds: float


class DynamicBatcher(Generic[Item, Result]):
    """Gathers items for ``run_batch(items) -> results`` (same order), which runs in ``executor``.

    ``run_batch`` may return an exception in place of a result to fail that item
    alone. If it raises, every item of the batch is retried on its own, so one bad
    request cannot fail the requests it happened to share a batch with.
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result | BaseException]], executor: Executor, *,
                 max_batch_size: int, max_wait_s: float, instances: int = 1,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_queue: Callable[[int], None] | None = None):
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.instances = max(1, instances)
        self._on_batch = on_batch or (lambda stats: None)
        self._on_queue = on_queue or (lambda depth: None)
        self._queue: asyncio.Queue[_Waiting[Item]] = asyncio.Queue()
        self._held: _Waiting[Item] | None = None  # taken from the queue, but did not fit the last batch
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._slots = asyncio.Semaphore(self.instances)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop after the waiting items have been answered (the server has stopped taking requests)."""
        while self._held is not None or not self._queue.empty() or self._running:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    async def submit(self, item: Item, rows: int = 1) -> Result:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Waiting(item, rows, future))
        self._on_queue(self.depth)
        return await future

    async def _loop(self) -> None:
        while True:
            # gather only once an instance is free: while all are busy, arrivals pile up into a fuller batch
            await self._slots.acquire()
            batch = await self._gather()
            self._on_queue(self.depth)
            live = [w for w in batch if not w.future.done()]  # a caller that went away is not computed for
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _gather(self) -> list[_Waiting[Item]]:
        first = self._held or await self._queue.get()
        self._held = None
        batch, rows = [first], first.rows
        # idle hardware never waits: company is worth waiting for only while another batch keeps the cores busy
        deadline = time.monotonic() + (self.max_wait_s if self._running else 0.0)
        while rows < self.max_batch_size:
            try:
                waiting = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if rows + waiting.rows > self.max_batch_size:
                self._held = waiting  # opens the next batch
                break
            batch.append(waiting)
            rows += waiting.rows
        return batch

    async def _run(self, batch: list[_Waiting[Item]]) -> None:
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._call,
                                                                   [w.item for w in batch])
        self._on_batch(BatchStats(rows=sum(w.rows for w in batch), requests=len(batch),
                                  seconds=time.perf_counter() - start))
        for waiting, result in zip(batch, results):
            if waiting.future.done():
                continue
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)

    def _call(self, items: list[Item]) -> Sequence[Result | BaseException]:
        try:
            return self._run_batch(items)
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        return [_alone(self._run_batch, item) for item in items]


def _alone(run_batch: Callable[[list[Item]], Sequence[Result | BaseException]], item: Item) -> Result | BaseException:
    try:
        return run_batch([item])[0]
    except Exception as exc:
        return exc


# ---------------------------------------------------------------- tensors


@dataclass(frozen=True)
class TensorLayout:
    """What the server knows about a model's tensors to put several requests into one call.

    ``axes`` names each input's and output's axes (``None`` for a fixed size), as
    the manifest records them; axis 0 is the batch axis when it is named.
    ``pad_values`` holds the inputs that may be padded and with what.
    """

    axes: dict[str, list[str | None]]
    pad_values: dict[str, int | float] = field(default_factory=dict)
    padding_side: str = "right"

    @property
    def batchable(self) -> bool:
        return all(names and names[0] is not None for names in self.axes.values())


Feed = dict[str, np.ndarray]
# Most padding one call may add, as a fraction of its real tokens, before a batch is split by length.
MAX_PADDING = 0.25


def run_tensor_batch(run: Callable[[Feed], Feed], layout: TensorLayout, feeds: list[Feed]) -> list[Feed]:
    """Run ``feeds`` (each with its own batch rows) in as few calls as their shapes allow; split the outputs."""
    if not layout.batchable:
        return [run(feed) for feed in feeds]
    results: list[Feed | None] = [None] * len(feeds)
    for group in _compatible_groups(layout, feeds).values():
        for members in _length_buckets(layout, feeds, group):
            outputs = _run_group(run, layout, [feeds[i] for i in members])
            for i, output in zip(members, outputs):
                results[i] = output
    return results  # type: ignore[return-value]  (every index was filled by its bucket)


def _compatible_groups(layout: TensorLayout, feeds: list[Feed]) -> dict[tuple[Any, ...], list[int]]:
    """Feeds that can share one call: equal on every axis except the batch axis and paddable axes."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for index, feed in enumerate(feeds):
        key = tuple((name, dim, size) for name in sorted(feed) for dim, size in enumerate(feed[name].shape)
                    if dim > 0 and not _paddable(layout, name, dim))
        groups[key].append(index)
    return groups


def _length_buckets(layout: TensorLayout, feeds: list[Feed], group: list[int]) -> list[list[int]]:
    if not layout.pad_values or len(group) == 1:
        return [group]
    sizes = [(_rows(feeds[i]), math.prod(_axis_sizes(layout, feeds[i]).values())) for i in group]
    return [[group[j] for j in bucket] for bucket in length_buckets(sizes)]


def length_buckets(sizes: list[tuple[int, int]]) -> list[list[int]]:
    """Indices of ``(rows, length)`` items, shortest first, cut so padding adds at most MAX_PADDING per call.

    On a CPU the graph's cost grows with the padded token count: a short text
    padded to a long one's length can cost more than sharing the call saves.
    """
    buckets: list[list[int]] = []
    rows = real = 0
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i][1]):
        n, length = sizes[i]
        # sorted ascending, so this item's length is the padded length of the bucket it joins
        if not buckets or (rows + n) * length > (1 + MAX_PADDING) * (real + n * length):
            buckets.append([])
            rows = real = 0
        buckets[-1].append(i)
        rows, real = rows + n, real + n * length
    return buckets


def _rows(feed: Feed) -> int:
    return int(next(iter(feed.values())).shape[0])


def _paddable(layout: TensorLayout, name: str, dim: int) -> bool:
    axes = layout.axes.get(name, [])
    return name in layout.pad_values and dim < len(axes) and axes[dim] is not None


def _run_group(run: Callable[[Feed], Feed], layout: TensorLayout, feeds: list[Feed]) -> list[Feed]:
    if len(feeds) == 1:
        return [run(feeds[0])]
    lengths = [_axis_sizes(layout, feed) for feed in feeds]
    target = {axis: max(sizes.get(axis, 0) for sizes in lengths) for axis in set().union(*lengths)}
    stacked = {name: np.concatenate([_padded(layout, name, feed[name], target) for feed in feeds])
               for name in feeds[0]}
    outputs = run(stacked)
    rows = np.cumsum([0] + [_rows(feed) for feed in feeds])
    return [{name: _cut(layout, name, value[rows[i]:rows[i + 1]], lengths[i]) for name, value in outputs.items()}
            for i in range(len(feeds))]


def _axis_sizes(layout: TensorLayout, feed: Feed) -> dict[str, int]:
    """The size of each named, paddable axis in this feed (e.g. ``{"sequence": 12}``)."""
    sizes: dict[str, int] = {}
    for name, array in feed.items():
        for dim, size in enumerate(array.shape):
            if dim > 0 and _paddable(layout, name, dim):
                sizes[layout.axes[name][dim]] = size  # type: ignore[index]
    return sizes


def _padded(layout: TensorLayout, name: str, array: np.ndarray, target: dict[str, int]) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    for dim in range(1, array.ndim):
        if _paddable(layout, name, dim):
            extra = target[layout.axes[name][dim]] - array.shape[dim]  # type: ignore[index]
            widths[dim] = (extra, 0) if layout.padding_side == "left" else (0, extra)
    if not any(w for pair in widths for w in pair):
        return array
    return np.pad(array, widths, constant_values=layout.pad_values[name])


def _cut(layout: TensorLayout, name: str, array: np.ndarray, sizes: dict[str, int]) -> np.ndarray:
    """Undo the padding on an output: its axes named like a padded input axis go back to the item's length."""
    index: list[slice] = [slice(None)] * array.ndim
    for dim, axis in enumerate(layout.axes.get(name, [])):
        if dim > 0 and dim < array.ndim and axis in sizes:
            keep = sizes[axis]
            index[dim] = slice(array.shape[dim] - keep, None) if layout.padding_side == "left" else slice(0, keep)
    return np.ascontiguousarray(array[tuple(index)])
