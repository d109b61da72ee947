"""Dynamic batching on its own: how items are gathered, padded, split back and kept apart when one fails."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.serve.batching import DynamicBatcher, TensorLayout, length_buckets, run_tensor_batch


def gather(batcher: DynamicBatcher, items: list, rows: list[int] | None = None) -> list:
    """Submit every item at once (as concurrent clients would) and collect the answers or exceptions."""
    async def main() -> list:
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(item, r) for item, r in zip(items, rows or [1] * len(items))),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    return asyncio.run(main())


class Recorder:
    """A run_batch that records the batches it saw; items named 'bad' make the whole batch raise."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.lock = threading.Lock()

    def __call__(self, items: list) -> list:
        with self.lock:
            self.batches.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [f"answer to {item}" for item in items]


def test_concurrent_items_share_batches_up_to_the_size_limit() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)
    answers = gather(DynamicBatcher(run, pool, max_batch_size=4, max_wait_s=0.2), [f"r{i}" for i in range(10)])
    assert answers == [f"answer to r{i}" for i in range(10)]
    assert [len(b) for b in run.batches] == [4, 4, 2]


def test_rows_not_requests_fill_a_batch() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)
    gather(DynamicBatcher(run, pool, max_batch_size=4, max_wait_s=0.2), ["a", "b", "c"], rows=[3, 2, 1])
    # a (3 rows) cannot take b (2 more): b opens the next batch, which c joins
    assert run.batches == [["a"], ["b", "c"]]


def test_batch_size_one_runs_every_request_alone() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)
    gather(DynamicBatcher(run, pool, max_batch_size=1, max_wait_s=0.2), ["a", "b", "c"])
    assert run.batches == [["a"], ["b"], ["c"]]


def test_one_bad_request_fails_alone() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)
    answers = gather(DynamicBatcher(run, pool, max_batch_size=8, max_wait_s=0.2), ["a", "bad", "c"])
    assert answers[0] == "answer to a" and answers[2] == "answer to c"
    assert isinstance(answers[1], ValueError)
    assert run.batches[0] == ["a", "bad", "c"] and ["a"] in run.batches and ["bad"] in run.batches


def test_instances_run_batches_side_by_side() -> None:
    both = threading.Barrier(2, timeout=30)  # passes only when two batches are in run_batch at once

    def meet(items: list) -> list:
        both.wait()
        return items

    pool = ThreadPoolExecutor(2)
    answers = gather(DynamicBatcher(meet, pool, max_batch_size=1, max_wait_s=0, instances=2), ["a", "b"])
    assert answers == ["a", "b"]


def test_an_idle_model_does_not_wait_for_company() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)

    async def main() -> str:
        batcher = DynamicBatcher(run, pool, max_batch_size=8, max_wait_s=600)
        batcher.start()
        # nothing else runs, so the lone request goes at once rather than after max_wait_s
        answer = await asyncio.wait_for(batcher.submit("alone"), timeout=30)
        await batcher.stop()
        return answer

    assert asyncio.run(main()) == "answer to alone"


def test_a_busy_model_waits_for_company() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(2)
    gate = threading.Event()

    def held_then_record(items: list) -> list:
        if items == ["first"]:
            gate.wait(30)  # keeps one instance busy
        return run(items)

    async def main() -> None:
        batcher = DynamicBatcher(held_then_record, pool, max_batch_size=2, max_wait_s=600, instances=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit("second"))
        await asyncio.sleep(0.2)  # the second request is now waiting for company, since "first" still runs
        third = asyncio.ensure_future(batcher.submit("third"))
        await asyncio.wait_for(asyncio.gather(second, third), timeout=30)
        gate.set()
        await first
        await batcher.stop()

    asyncio.run(main())
    assert ["second", "third"] in run.batches


def test_a_caller_that_went_away_is_not_computed_for() -> None:
    run, pool = Recorder(), ThreadPoolExecutor(1)
    gate = threading.Event()

    def slow_then_record(items: list) -> list:
        gate.wait(5)  # holds the worker so that the next items wait in the queue
        return run(items)

    async def main() -> str:
        batcher = DynamicBatcher(slow_then_record, pool, max_batch_size=1, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0.05)
        gone.cancel()
        gate.set()
        answer = await kept
        await first
        await batcher.stop()
        return answer

    assert asyncio.run(main()) == "answer to kept"
    assert ["gone"] not in run.batches and ["kept"] in run.batches


# ---------------------------------------------------------------- tensors: pad, stack, cut back

LAYOUT = TensorLayout(
    axes={"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
          "pooled": ["batch", None], "per_token": ["batch", "sequence", None]},
    pad_values={"input_ids": 9, "attention_mask": 0})


def masked_model(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Row-wise like a transformer with a mask: padding changes no real token's or row's value."""
    ids, mask = feed["input_ids"], feed["attention_mask"]
    pooled = (ids * mask).sum(axis=1, keepdims=True) * np.array([[1, -1]])
    per_token = np.stack([ids * 2, ids * mask], axis=-1)
    return {"pooled": pooled, "per_token": per_token}


def text_feed(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(100, 1000, (rows, length))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_gives_each_feed_its_own_answer(side: str) -> None:
    layout = TensorLayout(LAYOUT.axes, LAYOUT.pad_values, padding_side=side)
    feeds = [text_feed(1, 6, 0), text_feed(2, 7, 1), text_feed(1, 5, 2)]
    calls: list[tuple[int, ...]] = []

    def counted(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(feed["input_ids"].shape)
        return masked_model(feed)

    batched = run_tensor_batch(counted, layout, feeds)
    assert calls == [(4, 7)]  # one call, padded to the longest (3 padding tokens on 25 real ones)
    for feed, result in zip(feeds, batched):
        alone = masked_model(feed)
        assert result["per_token"].shape == alone["per_token"].shape
        for name in alone:
            np.testing.assert_array_equal(result[name], alone[name])


def test_lengths_far_apart_run_in_separate_calls() -> None:
    shapes: list[tuple[int, ...]] = []

    def counted(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes.append(feed["input_ids"].shape)
        return masked_model(feed)

    feeds = [text_feed(1, 40, 0), text_feed(1, 4, 1), text_feed(3, 5, 2), text_feed(1, 38, 3)]
    results = run_tensor_batch(counted, LAYOUT, feeds)
    assert shapes == [(4, 5), (2, 40)]  # short ones together, long ones together: padding stays small
    for feed, result in zip(feeds, results):
        np.testing.assert_array_equal(result["pooled"], masked_model(feed)["pooled"])


def test_length_buckets_bound_the_padding() -> None:
    assert length_buckets([(1, 10), (1, 10), (1, 11)]) == [[0, 1, 2]]
    assert length_buckets([(1, 50), (8, 4), (1, 5)]) == [[1, 2], [0]]
    assert length_buckets([(1, 3)]) == [[0]]


def test_the_wrong_padding_would_be_caught() -> None:
    # the twin of the test above: pad with 1 in the mask, and a row's pooled value changes
    wrong = TensorLayout(LAYOUT.axes, {"input_ids": 9, "attention_mask": 1})
    feeds = [text_feed(1, 6, 0), text_feed(1, 7, 1)]
    assert not np.array_equal(run_tensor_batch(masked_model, wrong, feeds)[0]["pooled"],
                              masked_model(feeds[0])["pooled"])


def test_inputs_that_cannot_be_padded_run_in_separate_calls() -> None:
    layout = TensorLayout({"pixels": ["batch", None, "width"], "out": ["batch", None]})
    shapes: list[tuple[int, ...]] = []

    def model(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes.append(feed["pixels"].shape)
        return {"out": feed["pixels"].sum(axis=2)}

    feeds = [{"pixels": np.ones((1, 2, w))} for w in (4, 5, 4)]
    results = run_tensor_batch(model, layout, feeds)
    assert sorted(shapes) == [(1, 2, 5), (2, 2, 4)]
    assert [r["out"][0, 0] for r in results] == [4, 5, 4]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 12)), min_size=1, max_size=8), st.integers(0, 2 ** 16))
def test_any_mix_of_lengths_splits_back_exactly(shapes: list[tuple[int, int]], seed: int) -> None:
    feeds = [text_feed(rows, length, seed + i) for i, (rows, length) in enumerate(shapes)]
    for feed, result in zip(feeds, run_tensor_batch(masked_model, LAYOUT, feeds)):
        for name, value in masked_model(feed).items():
            np.testing.assert_array_equal(result[name], value)
