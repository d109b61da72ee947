"""A real ``zoo serve`` process (uvicorn, torch unimportable): tritonclient, curl-like calls, concurrency, fuzzing.

Tolerance under batching: a request that shares a batch with longer texts is
padded, and the padded graph call sums over different matrix shapes, so float32
results may differ from the lone call in the last bits (about 3e-8 seen on
MiniLM's unit-length embeddings). Concurrent answers are held to 1e-6 absolute,
ten times float32's rounding step near 1, and must pick the same label. A lone
request is compared bit for bit.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import zoo
from tests.serving import ROOT, LiveServer, infer_json, live_server, text_arrays

SENTENCES = ["Hi", "A man is eating food.", "The quick brown fox jumps over the lazy dog near the river bank",
             "Zoo", "Someone is playing a guitar", "It rained all day, so the match was called off at noon",
             "A cat", "Three engineers argued about tensor layouts until the coffee ran out"]
ATOL = 1e-6


@pytest.fixture(scope="module")
def server(minilm_artifact: Path, timm_artifact: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    # a 50 ms window makes concurrent test clients share batches reliably on a busy machine
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with live_server([f"minilm={minilm_artifact}", f"timm={timm_artifact}", "--max-wait-ms", "50",
                      "--max-batch-size", "16"], log) as live:
        yield live


@pytest.fixture(scope="module")
def minilm(minilm_artifact: Path) -> zoo.ExportedModel:
    return zoo.load(minilm_artifact)


def client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def triton_inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_tritonclient_health_and_metadata(server: LiveServer) -> None:
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("minilm") and c.is_model_ready("timm", model_version="1")
    assert not c.is_model_ready("nope")
    meta = c.get_model_metadata("minilm")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1]), ("token_type_ids", "INT64", [-1, -1])]
    assert meta["outputs"] == [{"name": "embeddings", "datatype": "FP32", "shape": [-1, 384]}]
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_gives_the_runtime_numbers(server: LiveServer, minilm: zoo.ExportedModel,
                                                      minilm_artifact: Path, binary: bool) -> None:
    arrays = text_arrays(minilm_artifact, SENTENCES[2])
    outputs = [triton.InferRequestedOutput("embeddings", binary_data=binary)]
    result = client(server).infer("minilm", triton_inputs(arrays, binary), outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    np.testing.assert_array_equal(result.as_numpy("embeddings"), minilm(**arrays)["embeddings"])


def test_tritonclient_infer_on_the_image_model(server: LiveServer, timm_artifact: Path) -> None:
    pixels = np.random.default_rng(0).standard_normal((2, *zoo.load(timm_artifact).info["inputs"][0]["shape"][1:])
                                                      ).astype(np.float32)
    result = client(server).infer("timm", triton_inputs({"pixel_values": pixels}, binary=True))
    expected = zoo.load(timm_artifact)(pixel_values=pixels)
    (name,) = expected
    np.testing.assert_array_equal(result.as_numpy(name), expected[name])


def test_tritonclient_sees_protocol_errors(server: LiveServer, minilm_artifact: Path) -> None:
    arrays = text_arrays(minilm_artifact, "hi")
    arrays["input_ids"] = arrays["input_ids"].astype(np.int32)
    with pytest.raises(InferenceServerException, match="has datatype INT32; the model expects") as caught:
        client(server).infer("minilm", triton_inputs(arrays, binary=True))
    assert caught.value.status() == "400"


def test_curl_like_calls_on_both_endpoints(server: LiveServer, minilm: zoo.ExportedModel, image_file: Path,
                                           timm_artifact: Path) -> None:
    answer = httpx.post(f"{server.url}/v1/models/minilm/predict", json={"inputs": ["A man is eating food."]})
    assert answer.status_code == 200
    np.testing.assert_array_equal(np.array(answer.json()[0]["vector"], dtype=np.float32),
                                  minilm.predict("A man is eating food.").vector)
    with open(image_file, "rb") as fh:
        answer = httpx.post(f"{server.url}/v1/models/timm/predict", params={"top_k": 2},
                            files={"files": (image_file.name, fh, "image/jpeg")})
    assert answer.status_code == 200
    expected = zoo.load(timm_artifact).predict(image_file, top_k=2)
    assert answer.json() == [{"input": image_file.name, **expected.to_dict()}]
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["task"] == "feature-extraction"


def readme_json(marker: str) -> dict:
    """The JSON body of the README's curl example whose line contains ``marker``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(marker)
    body = readme[readme.index("-d '", start) + 4:]
    return json.loads(body[:body.index("'")])


def test_the_readme_curl_examples(server: LiveServer) -> None:
    answer = httpx.post(f"{server.url}/v2/models/minilm/infer", json=readme_json("/v2/models/minilm/infer"))
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 384]
    texts = readme_json("/v1/models/minilm/predict")
    answer = httpx.post(f"{server.url}/v1/models/minilm/predict", json=texts)
    assert answer.status_code == 200 and [row["input"] for row in answer.json()] == texts["inputs"]


async def _concurrent(url: str, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        return await asyncio.gather(*(http.post(path, json=body) for path, body in bodies))


def _batch_counts(url: str) -> dict[str, float]:
    """zoo_batch_requests histogram buckets for minilm: how many batches had at most N requests."""
    text = httpx.get(f"{url}/metrics").text
    pattern = r'zoo_batch_requests_bucket\{le="([^"]+)",model="minilm"\} (\S+)'
    return {le: float(count) for le, count in re.findall(pattern, text)}


def test_concurrent_clients_get_their_own_answers(server: LiveServer, minilm: zoo.ExportedModel,
                                                  minilm_artifact: Path) -> None:
    before = _batch_counts(server.url)
    arrays = [text_arrays(minilm_artifact, s) for s in SENTENCES]
    bodies = [("/v2/models/minilm/infer", infer_json(a, id=str(i))) for i, a in enumerate(arrays)]
    bodies += [("/v1/models/minilm/predict", {"inputs": [s]}) for s in SENTENCES]
    answers = asyncio.run(_concurrent(server.url, bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies)
    for i, (a, sentence) in enumerate(zip(arrays, SENTENCES)):
        alone = minilm(**a)["embeddings"][0]
        tensor = answers[i].json()
        assert tensor["id"] == str(i)
        np.testing.assert_allclose(np.array(tensor["outputs"][0]["data"], np.float32), alone, rtol=0, atol=ATOL)
        predicted = answers[len(arrays) + i].json()[0]
        assert predicted["input"] == sentence
        np.testing.assert_allclose(np.array(predicted["vector"], np.float32), alone, rtol=0, atol=ATOL)
    # every request is counted in the batch-size histogram; whether two of them met in one batch depends on
    # how fast this machine serves the first ones, so that is test_serve_batching's (with a held model) to show
    after = _batch_counts(server.url)
    assert 0 < after["+Inf"] - before.get("+Inf", 0) <= len(bodies)


def test_a_slow_client_does_not_hold_up_the_others(server: LiveServer, minilm_artifact: Path) -> None:
    body = json.dumps(infer_json(text_arrays(minilm_artifact, "slow"))).encode()
    head = (f"POST /v2/models/minilm/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as slow:
        slow.sendall(head + body[:len(body) // 2])  # ... and then it stalls
        fast = [("/v1/models/minilm/predict", {"inputs": [s]}) for s in SENTENCES[:4]]
        assert [a.status_code for a in asyncio.run(_concurrent(server.url, fast))] == [200] * 4
        slow.sendall(body[len(body) // 2:])
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")


def test_concurrent_bad_and_good_requests_are_kept_apart(server: LiveServer, minilm_artifact: Path) -> None:
    good = text_arrays(minilm_artifact, "fine")
    bad = {**good, "input_ids": np.full_like(good["input_ids"], 10 ** 9)}
    bodies = [("/v2/models/minilm/infer", infer_json(a)) for a in (good, bad, good, bad)]
    codes = [a.status_code for a in asyncio.run(_concurrent(server.url, bodies))]
    assert codes == [200, 400, 200, 400]


# ---------------------------------------------------------------- fuzzing the OpenAPI schema


def test_no_generated_request_gets_a_5xx(server: LiveServer) -> None:
    """schemathesis generates requests for every operation of /openapi.json; none may be a server error.

    (Driven by hand rather than through schemathesis' pytest plugin, whose fixture
    loader reads a pytest internal that pytest 9 no longer has.)
    """
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            assert response.status_code < 500, (f"{case.method} {case.formatted_path}: {response.status_code} "
                                                f"{response.text[:500]}")

        no_server_error()


def test_access_log_lines_are_json(server: LiveServer) -> None:
    httpx.get(f"{server.url}/v2/health/live?probe=log")

    def logged() -> bool:
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        return any(line["path"] == "/v2/health/live" and line["status"] == 200 for line in lines)

    deadline = time.monotonic() + 10  # the line reaches the log file just after the response
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert logged()
    assert "Traceback" not in server.output()

