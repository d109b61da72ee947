"""The app in-process (FastAPI's TestClient): protocol errors, the task endpoint, metrics and the access log."""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import zoo
from tests.serving import infer_json, text_arrays
from zoo.cli.app import app as cli
from zoo.serve import ServeSettings, create_app, load_models
from zoo.serve.errors import RequestError
from zoo.serve.models import InputLimits, embedding_rows, input_limits

SETTINGS = ServeSettings(max_batch_size=8, max_wait_ms=2, max_body_bytes=256 << 10)


@pytest.fixture(scope="module")
def client(minilm_artifact: Path, timm_artifact: Path) -> Iterator[TestClient]:
    models = load_models([f"minilm={minilm_artifact}", f"timm={timm_artifact}"], SETTINGS)
    with TestClient(create_app(models, SETTINGS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def hello(minilm_artifact: Path) -> dict[str, np.ndarray]:
    return text_arrays(minilm_artifact, "hello there, general zoo")


def test_infer_json_matches_the_runtime(client: TestClient, hello: dict, minilm_artifact: Path) -> None:
    answer = client.post("/v2/models/minilm/infer", json=infer_json(hello, id="a1"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "a1" and body["model_name"] == "minilm"
    (output,) = body["outputs"]
    expected = zoo.load(minilm_artifact)(**hello)["embeddings"]
    assert output["datatype"] == "FP32" and output["shape"] == [1, 384]
    np.testing.assert_array_equal(np.array(output["data"], dtype=np.float32).reshape(1, 384), expected)


def test_gzip_request_bodies_are_inflated(client: TestClient, hello: dict) -> None:
    plain = client.post("/v2/models/minilm/infer", json=infer_json(hello)).json()
    packed = client.post("/v2/models/minilm/infer", content=gzip.compress(json.dumps(infer_json(hello)).encode()),
                         headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert packed.status_code == 200 and packed.json() == plain


ENDPOINTS = {"infer": "/v2/models/minilm/infer", "predict": "/v1/models/minilm/predict"}
ENCODERS = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}


def _json_body(endpoint: str, hello: dict) -> dict:
    return infer_json(hello) if endpoint == "infer" else {"inputs": ["hello there, general zoo"]}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("encoding", ENCODERS)
def test_both_endpoints_decode_bodies_alike(client: TestClient, hello: dict, endpoint: str, encoding: str) -> None:
    body = _json_body(endpoint, hello)
    plain = client.post(ENDPOINTS[endpoint], json=body).json()
    packed = client.post(ENDPOINTS[endpoint], content=ENCODERS[encoding](json.dumps(body).encode()),
                         headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
    assert packed.status_code == 200, packed.text
    assert packed.json() == plain


def test_a_gzip_image_upload_is_inflated(client: TestClient, image_file: Path) -> None:
    files = [("files", (image_file.name, image_file.read_bytes(), "image/jpeg"))]
    plain = client.post("/v1/models/timm/predict", files=files)
    form = httpx.Request("POST", "http://test", files=files)
    packed = client.post("/v1/models/timm/predict", content=gzip.compress(form.read()),
                         headers={"Content-Type": form.headers["Content-Type"], "Content-Encoding": "gzip"})
    assert packed.status_code == 200, packed.text
    assert packed.json() == plain.json()


def test_a_refused_encoding_of_an_upload_keeps_its_status(client: TestClient, image_file: Path) -> None:
    form = httpx.Request("POST", "http://test", files=[("files", (image_file.name, image_file.read_bytes()))])
    answer = client.post("/v1/models/timm/predict", content=form.read(),
                         headers={"Content-Type": form.headers["Content-Type"], "Content-Encoding": "br"})
    assert answer.status_code == 415, answer.text
    assert "Content-Encoding 'br' is not supported" in answer.json()["error"]


_BOMB = gzip.compress(b" " * (300 << 10))  # 300 KiB of JSON whitespace from ~300 bytes: over the 256 KiB limit
BAD_ENCODINGS = {
    "brotli": (415, "br", None, "Content-Encoding 'br' is not supported; send identity, gzip or deflate"),
    "unknown": (415, "x-zoo", None, "Content-Encoding 'x-zoo' is not supported"),
    "two encodings": (415, "gzip, br", None, "Content-Encoding 'gzip, br' is not supported"),
    "not gzip": (400, "gzip", b"plain text", "the gzip body cannot be inflated"),
    "truncated gzip": (400, "gzip", gzip.compress(b'{"inputs": []}' * 50)[:-12], "the gzip body is cut short"),
    "two gzip streams": (400, "gzip", gzip.compress(b'{"inputs": ') + gzip.compress(b'[]}'),
                         "the gzip body goes on after its compressed stream ends"),
    "gzip bomb": (413, "gzip", _BOMB, "the inflated body is over this server's limit of 262144 bytes"),
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status, encoding, content, message", BAD_ENCODINGS.values(), ids=BAD_ENCODINGS.keys())
def test_both_endpoints_refuse_encodings_alike(client: TestClient, hello: dict, endpoint: str, status: int,
                                               encoding: str, content: bytes | None, message: str) -> None:
    body = content if content is not None else json.dumps(_json_body(endpoint, hello)).encode()
    answer = client.post(ENDPOINTS[endpoint], content=body,
                         headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]


def _predict_cli(artifact: Path, *inputs: str, top_k: int | None = None) -> list[dict]:
    options = ["--top-k", str(top_k)] if top_k is not None else []
    done = CliRunner().invoke(cli, ["predict", str(artifact), *inputs, "--json", *options])
    assert done.exit_code == 0, done.output
    return json.loads(done.output)


def test_predict_text_is_what_zoo_predict_json_prints(client: TestClient, minilm_artifact: Path) -> None:
    texts = ["A man is eating food.", "Someone is playing a guitar in the park at night"]
    answer = client.post("/v1/models/minilm/predict", json={"inputs": texts})
    assert answer.status_code == 200, answer.text
    assert answer.json() == _predict_cli(minilm_artifact, *texts)


def test_predict_image_upload_is_what_zoo_predict_json_prints(client: TestClient, timm_artifact: Path,
                                                              image_file: Path) -> None:
    files = [("files", (image_file.name, image_file.read_bytes(), "image/jpeg"))]
    answer = client.post("/v1/models/timm/predict?top_k=3", files=files)
    assert answer.status_code == 200, answer.text
    expected = _predict_cli(timm_artifact, str(image_file), top_k=3)
    expected[0]["input"] = image_file.name  # the CLI names the path it was given, the server the upload's name
    assert answer.json() == expected


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _oversized_chunks() -> Iterator[bytes]:
    for _ in range(5):
        yield b"x" * (100 << 10)  # no Content-Length: the limit must be counted as the body arrives


BAD_REQUESTS = {
    "unknown model": (404, "post", "/v2/models/nope/infer", {"json": {"inputs": []}}, "no model named 'nope'"),
    "unknown model metadata": (404, "get", "/v2/models/nope", {}, "served: minilm, timm"),
    "unknown version": (404, "get", "/v2/models/minilm/versions/2", {}, "has only version 1"),
    "unknown route": (404, "get", "/v3/anything", {}, "GET /v3/anything is not a route"),
    "wrong method": (405, "get", "/v2/models/minilm/infer", {}, "Method Not Allowed"),
    "malformed JSON": (400, "post", "/v2/models/minilm/infer", {"content": b"{"}, "malformed inference request"),
    "wrong dtype": (400, "post", "/v2/models/timm/infer", {"json": {"inputs": [
        {"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP64", "data": [0.0] * 3072}]}},
        "has datatype FP64; the model expects pixel_values FP32"),
    "wrong shape": (400, "post", "/v2/models/timm/infer", {"json": {"inputs": [
        {"name": "pixel_values", "shape": [1, 3, 32], "datatype": "FP32", "data": [0.0] * 96}]}},
        "has shape [1, 3, 32] (3 axes)"),
    "missing input": (400, "post", "/v2/models/minilm/infer", {"json": {"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]}]}},
        "missing attention_mask, token_type_ids"),
    "unknown output": (400, "post", "/v2/models/minilm/infer", {"json": {"inputs": [
        {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}],
        "outputs": [{"name": "logits"}]}}, "requested output(s) logits do not exist"),
    "oversized body": (413, "post", "/v2/models/minilm/infer", {"content": b"x" * (300 << 10)},
                       "over this server's limit"),
    "oversized chunked body": (413, "post", "/v2/models/minilm/infer", {"content": _oversized_chunks()},
                               "over this server's limit"),
    "unknown content encoding": (415, "post", "/v2/models/minilm/infer",
                                 {"content": b"{}", "headers": {"Content-Encoding": "br"}}, "is not supported"),
    "text predict without JSON": (415, "post", "/v1/models/minilm/predict", {"content": b"hi",
                                  "headers": {"Content-Type": "text/plain"}}, "takes JSON"),
    "text predict with no texts": (400, "post", "/v1/models/minilm/predict", {"json": {"inputs": []}},
                                   "malformed predict request"),
    "text predict with numbers": (400, "post", "/v1/models/minilm/predict", {"json": {"inputs": [3]}},
                                  "malformed predict request"),
    "image predict with JSON": (415, "post", "/v1/models/timm/predict", {"json": {"inputs": ["a"]}},
                                "multipart/form-data"),
    "image predict, not an image": (400, "post", "/v1/models/timm/predict",
                                    {"files": [("files", ("cat.jpg", b"GIF89a not really", "image/jpeg"))]},
                                    "upload 'cat.jpg' is not an image"),
    "image predict, no file": (400, "post", "/v1/models/timm/predict", {"data": {"top": "1"},
                               "files": [("x", ("", b"", "text/plain"))]}, "no file in the multipart body"),
    "top_k of 0": (400, "post", "/v1/models/minilm/predict?top_k=0", {"json": {"inputs": ["a"]}},
                   "bad request parameters"),
}


@pytest.mark.parametrize("status, method, path, kwargs, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_get_the_protocol_error_body(client: TestClient, status: int, method: str, path: str,
                                                  kwargs: dict, message: str, hello: dict) -> None:
    answer = getattr(client, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert set(answer.json()) == {"error"}
    # and the server keeps serving
    assert client.post("/v2/models/minilm/infer", json=infer_json(hello)).status_code == 200


def _tokens(count: int, token: int = 1000) -> dict[str, np.ndarray]:
    """A MiniLM feed of ``count`` tokens: [CLS], ``token`` repeated, [SEP]."""
    ids = np.array([[101] + [token] * (count - 2) + [102]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_a_sequence_over_the_manifest_limit_is_a_400_naming_both_lengths(client: TestClient) -> None:
    answer = client.post("/v2/models/minilm/infer", json=infer_json(_tokens(600)))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "input 'input_ids' has 600 tokens" in error and "at most 256" in error, error
    assert "onnxruntime" not in error


@pytest.mark.parametrize("count, status", [(256, 200), (257, 400)])
def test_the_sequence_limit_boundary(client: TestClient, count: int, status: int) -> None:
    answer = client.post("/v2/models/minilm/infer", json=infer_json(_tokens(count)))
    assert answer.status_code == status, answer.text


BAD_IDS = {
    "negative token id": ("input_ids", -5, "input 'input_ids' holds -5"),
    "token id past the vocabulary": ("input_ids", 30522, "input 'input_ids' holds 30522"),
    "far past the vocabulary": ("input_ids", 10 ** 9, "input 'input_ids' holds 1000000000"),
    "token type past its table": ("token_type_ids", 2, "input 'token_type_ids' holds 2"),
}


@pytest.mark.parametrize("name, value, message", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_ids_outside_the_embedding_are_a_400_naming_the_input(client: TestClient, name: str, value: int,
                                                              message: str) -> None:
    feed = _tokens(8)
    feed[name][0, 3] = value
    answer = client.post("/v2/models/minilm/infer", json=infer_json(feed))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert message in error and "onnxruntime" not in error, error


def test_the_last_row_of_each_embedding_is_accepted(client: TestClient) -> None:
    feed = _tokens(8, token=30521)
    feed["token_type_ids"][0, 4:] = 1
    assert client.post("/v2/models/minilm/infer", json=infer_json(feed)).status_code == 200


def _lookup_graph(path: Path, *, cast_first: bool) -> Path:
    """input_ids -> Gather from a 10-row table; with ``cast_first`` the ids pass a Cast before the lookup."""
    import onnx
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 4], [0.0] * 40)
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32)] if cast_first else []
    nodes.append(helper.make_node("Gather", ["table", "ids32" if cast_first else "input_ids"], ["out"]))
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                             ["batch", "sequence"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [table])
    onnx.save(helper.make_model(graph), path)
    return path


def test_the_id_range_comes_from_the_graphs_embedding(tmp_path: Path) -> None:
    assert embedding_rows(_lookup_graph(tmp_path / "direct.onnx", cast_first=False)) == {"input_ids": 10}


def test_without_a_visible_embedding_only_negative_ids_are_refused(tmp_path: Path) -> None:
    info = {"preprocess": {"max_length": 8}, "inputs": [{"name": "input_ids", "shape": ["batch", "sequence"]}]}
    limits = input_limits(info, _lookup_graph(tmp_path / "cast.onnx", cast_first=True))
    assert limits == InputLimits(max_tokens=8, id_rows={"input_ids": None})
    spec = info["inputs"][0]
    limits.check("m", "input_ids", np.array([[101, 10 ** 6]]), spec)  # past the unknown end: onnxruntime's to judge
    with pytest.raises(RequestError, match=r"input 'input_ids' holds -5 at \[0, 1\]; ids cannot be negative \(the "
                                           "size of the table it indexes is not known here"):
        limits.check("m", "input_ids", np.array([[101, -5]]), spec)


def test_a_png_upload_twin_of_the_undecodable_one(client: TestClient) -> None:
    answer = client.post("/v1/models/timm/predict", files=[("files", ("green.png", _png(), "image/png"))])
    assert answer.status_code == 200 and answer.json()[0]["input"] == "green.png"


def test_metrics_count_requests_batches_and_queues(client: TestClient, hello: dict) -> None:
    client.post("/v2/models/minilm/infer", json=infer_json(hello))
    client.get("/v2/models/nope")
    text = client.get("/metrics").text
    assert 'zoo_requests_total{code="200",endpoint="/v2/models/{name}/infer",model="minilm"}' in text
    assert 'zoo_requests_total{code="404",endpoint="/v2/models/{name}",model="nope"}' in text
    assert 'zoo_request_duration_seconds_bucket{endpoint="/v2/models/{name}/infer"' in text
    assert 'zoo_batch_size_count{model="minilm"}' in text
    assert 'zoo_queue_depth{model="minilm",queue="infer"} 0.0' in text


def test_every_request_is_one_json_access_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zoo.serve.access"):
        client.get("/v2/models/minilm")
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "zoo.serve.access"]
    assert line["method"] == "GET" and line["path"] == "/v2/models/minilm" and line["status"] == 200
    assert line["model"] == "minilm" and line["ms"] >= 0


def test_openapi_documents_the_protocol_request(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferenceRequest")
    assert "RequestInput" in schema["components"]["schemas"]


def test_an_unexpected_failure_is_a_500_with_one_line(timm_artifact: Path, image_file: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    models = load_models([f"timm={timm_artifact}"], SETTINGS)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(models[0].model, "predict", broken)
    with TestClient(create_app(models, SETTINGS), raise_server_exceptions=False) as fresh:
        answer = fresh.post("/v1/models/timm/predict", files=[("files", ("a.jpg", image_file.read_bytes()))])
        assert answer.status_code == 500
        assert answer.json() == {"error": "internal error (RuntimeError); the server log has the details"}
        assert fresh.get("/v2/health/ready").status_code == 200  # and it keeps serving
