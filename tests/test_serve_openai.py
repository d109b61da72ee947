"""zoo serve's OpenAI-compatible routes, driven by the official ``openai`` client against a live server.

One tiny random Qwen2 (the ChatML template of tests/tiny.py, a 4096-token context so a
generation can outlast the client that asked for it) is exported once and served with
one generation slot and no queue (--generations 1 --generation-queue 0). What the server
answers must equal what ``zoo.load(artifact)`` generates in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import tiny
from tests.serving import LiveServer, live_server, metric

openai = pytest.importorskip("openai")

PROMPT = "The capital of France is"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
SAMPLED = {"temperature": 1.0, "seed": 2}  # seeded sampling: the random model's greedy choice is EOS at once
# a generation no client waits for: several seconds of work at the tiny model's ~600 tokens a second here
LONG = 3000


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, registry) -> Path:
    from exporters.onnx import export_onnx

    root = tmp_path_factory.mktemp("openai-qwen2")
    with pytest.MonkeyPatch.context() as patch:
        import exporters.source

        patch.setitem(tiny.HF_TINY, "qwen2", {**tiny.HF_TINY["qwen2"], "max_position_embeddings": 4096})
        patch.setattr(exporters.source, "SEEDS", (0,))
        spec, _, _ = tiny.shrink(registry.get("qwen2.5-0.5b"), root / "model")
        return export_onnx(spec, out=root / "artifact").path


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("openai-serve") / "serve.log"
    with live_server([f"llm={artifact}", "--generations", "1", "--generation-queue", "0"], log) as live:
        yield live


@pytest.fixture(scope="module")
def local(artifact: Path):
    import zoo

    return zoo.load(artifact)


def client(server: LiveServer, retries: int = 2):
    # retries: a finished generation frees the single slot a moment after its answer; the client's own
    # 429 handling (Retry-After) covers that moment
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=retries)


def test_models_lists_the_served_artifact(server: LiveServer) -> None:
    [model] = client(server).models.list().data
    assert model.id == "llm" and model.owned_by == "zoo"
    assert model.model_extra["task"] == "text-generation"


def test_completion_equals_generate_with_usage(server: LiveServer, local) -> None:
    answer = client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=12, **SAMPLED)
    [want] = local.generate(PROMPT, max_new_tokens=12, **SAMPLED)
    assert want.text and answer.choices[0].text == want.text
    assert answer.choices[0].finish_reason == want.finish_reason == "length"
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens) == (20, 12)
    assert usage.total_tokens == 32
    greedy = client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=12)
    assert greedy.choices[0].text == local.generate(PROMPT, max_new_tokens=12)[0].text
    assert greedy.choices[0].finish_reason == "stop"  # the random model's first greedy choice is its EOS


def test_streamed_completion_joins_to_the_same_text(server: LiveServer, local) -> None:
    chunks = list(client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=12, stream=True,
                                                     stream_options={"include_usage": True}, **SAMPLED))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) > 1  # pieces as they come, not one answer at the end
    assert "".join(c.choices[0].text for c in text_chunks) == local.generate(PROMPT, max_new_tokens=12,
                                                                            **SAMPLED)[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == 20


def test_chat_equals_local_chat_streamed_or_not(server: LiveServer, local) -> None:
    want = local.chat(MESSAGES, max_new_tokens=10)  # greedy
    answer = client(server).chat.completions.create(model="llm", messages=MESSAGES, max_tokens=10)
    assert want.text and answer.choices[0].message.content == want.text
    assert answer.choices[0].message.role == "assistant"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (want.prompt_tokens, 10)
    chunks = list(client(server).chat.completions.create(model="llm", messages=MESSAGES, max_tokens=10,
                                                          stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_text_streamed_or_not(server: LiveServer, local) -> None:
    full = local.generate(PROMPT, max_new_tokens=16, **SAMPLED)[0].text
    stop = full[12:16]
    want = local.generate(PROMPT, max_new_tokens=16, stop=[stop], **SAMPLED)[0]
    assert want.text == full[:full.index(stop)] and want.finish_reason == "stop"
    answer = client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=16, stop=stop, **SAMPLED)
    assert answer.choices[0].text == want.text and answer.choices[0].finish_reason == "stop"
    chunks = list(client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=16, stop=["zzzz", stop],
                                                     stream=True, **SAMPLED))
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_unknown_model_is_openai_404(server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).completions.create(model="gpt-4", prompt=PROMPT)
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"
    assert caught.value.body["message"] == ("model 'gpt-4' is not served here; served: llm (GET /v1/models lists "
                                            "them)")
    assert caught.value.body["param"] == "model" and caught.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("call, param, message", [
    ({"n": 2}, "n", "n=2: zoo serve returns one choice per request"),
    ({"temperature": -1}, "temperature", "temperature=-1.0 must be >= 0"),
    ({"top_p": 0}, "top_p", "top_p=0.0 must be in (0, 1]"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens=0 must be a whole number >= 1"),
    ({"max_tokens": 5000}, "prompt", "passes the model's context length of 4096 tokens"),
    ({"stop": [""]}, "stop", "stop strings must be non-empty strings"),
    ({"extra_body": {"echo": True}}, "echo", "echo is not supported by zoo serve"),
    ({"extra_body": {"temperature": "hot"}}, "temperature", "'temperature': Input should be a valid number"),
])
def test_bad_parameters_are_one_clear_400(server: LiveServer, call: dict, param: str, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).completions.create(model="llm", prompt=PROMPT, **call)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param
    assert message in caught.value.body["message"] and "\n" not in caught.value.body["message"]


def test_chat_messages_are_checked(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError, match="message 0 has role 'robot'; valid roles"):
        client(server).chat.completions.create(model="llm", messages=[{"role": "robot", "content": "hi"}])


def test_past_the_queue_is_429_and_a_client_that_leaves_stops_its_generation(server: LiveServer) -> None:
    before = {o: metric(server, "zoo_generations_total", model="llm", outcome=o) for o in ("cancelled", "finished")}
    tokens_before = metric(server, "zoo_generated_tokens_total", model="llm")
    held = client(server).chat.completions.create(model="llm", messages=MESSAGES, max_tokens=LONG, stream=True)
    next(iter(held))  # the generation runs: the one slot is taken, and nothing may wait (--generation-queue 0)
    with pytest.raises(openai.RateLimitError) as caught:
        client(server, retries=0).completions.create(model="llm", prompt=PROMPT, max_tokens=4)
    assert caught.value.response.headers["retry-after"] == "1"
    assert "model 'llm' is busy" in caught.value.body["message"]
    held.close()  # the client hangs up mid-stream
    assert _wait_for(lambda: metric(server, "zoo_generations_total", model="llm", outcome="cancelled")
                     == before["cancelled"] + 1)
    assert metric(server, "zoo_generations_total", model="llm", outcome="finished") == before["finished"]
    assert metric(server, "zoo_generated_tokens_total", model="llm") - tokens_before < LONG
    # and the slot is free again
    assert client(server).completions.create(model="llm", prompt=PROMPT, max_tokens=2, **SAMPLED).usage


def _wait_for(condition, limit_s: float = 60) -> bool:
    """Poll until ``condition`` holds; the limit only bounds a failing run, it is not what is tested."""
    import time

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_stops_waiting_for_a_whole_answer_stops_its_generation(server: LiveServer) -> None:
    import httpx

    before = metric(server, "zoo_generations_total", model="llm", outcome="cancelled")
    body = {"model": "llm", "messages": MESSAGES, "max_tokens": LONG}
    # the client gives up after a fraction of the seconds the answer needs, and hangs up
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.2))
    assert _wait_for(lambda: metric(server, "zoo_generations_total", model="llm", outcome="cancelled")
                     == before + 1)
