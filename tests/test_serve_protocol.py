"""The Open Inference Protocol messages, checked against the bytes tritonclient itself writes and reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from zoo.serve.errors import RequestError
from zoo.serve.protocol import HEADER_LENGTH, InferenceRequest, encode_response, parse_request

TENSORS = {
    "ids": (np.arange(6, dtype=np.int64).reshape(2, 3), "INT64"),
    "pixels": (np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 2, 2), "FP32"),
    "half": (np.array([0.5, -2.0], dtype=np.float16), "FP16"),
    "flags": (np.array([True, False, True]), "BOOL"),
    "small": (np.array([[1, 255]], dtype=np.uint8), "UINT8"),
}


def tritonclient_body(binary: bool) -> tuple[bytes, int | None]:
    """A request body exactly as ``InferenceServerClient.infer`` sends it."""
    inputs = []
    for name, (array, datatype) in TENSORS.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return _get_inference_request(inputs=inputs, request_id="42", outputs=None, sequence_id=0, sequence_start=False,
                                  sequence_end=False, priority=0, timeout=None, custom_parameters=None)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requests_written_by_tritonclient_decode_exactly(binary: bool) -> None:
    body, json_length = tritonclient_body(binary)
    assert (json_length is not None) == binary
    request, tensors = parse_request(body, None if json_length is None else str(json_length))
    assert request.id == "42"
    for name, (array, _) in TENSORS.items():
        assert tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(tensors[name], array)


def test_bytes_tensors_decode_in_both_layouts() -> None:
    words = np.array([b"zoo", b"", "\u00e9t\u00e9".encode()], dtype=object)
    for binary in (True, False):
        tensor = triton.InferInput("words", [3], "BYTES")
        tensor.set_data_from_numpy(words, binary_data=binary)
        body, json_length = _get_inference_request([tensor], "", None, 0, False, False, 0, None, None)
        _, tensors = parse_request(body, None if json_length is None else str(json_length))
        assert list(tensors["words"]) == list(words)


def test_nested_and_flat_data_are_the_same_tensor() -> None:
    def body(data: list) -> bytes:
        return json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": data}]}).encode()

    _, nested = parse_request(body([[1, 2], [3.5, 4]]), None)
    _, flat = parse_request(body([1, 2, 3.5, 4]), None)
    np.testing.assert_array_equal(nested["x"], flat["x"])
    assert nested["x"].dtype == np.float32 and nested["x"].shape == (2, 2)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_responses_read_back_by_tritonclient(binary: bool) -> None:
    outputs = {"embeddings": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
               "ids": np.array([[7, -1]], dtype=np.int64)}
    request = InferenceRequest.model_validate({"id": "7", "inputs": [{"name": "x", "shape": [0], "datatype": "FP32",
                                                                     "data": []}],
                                               "parameters": {"binary_data_output": binary}})
    body, json_length = encode_response("m", request, outputs)
    assert (json_length is not None) == binary
    result = triton.InferResult.from_response_body(body, header_length=json_length)
    assert result.get_response()["id"] == "7" and result.get_response()["model_name"] == "m"
    for name, array in outputs.items():
        got = result.as_numpy(name)
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


def test_binary_is_chosen_per_requested_output() -> None:
    request = InferenceRequest.model_validate({
        "inputs": [{"name": "x", "shape": [0], "datatype": "FP32", "data": []}],
        "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]})
    body, json_length = encode_response("m", request, {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)})
    header = json.loads(body[:json_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8} and "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [0.0, 0.0] and len(body) == json_length + 8


def _json(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def _input(data: list, datatype: str = "INT64", shape: list | None = None, **extra: object) -> dict:
    return {"name": "x", "shape": shape if shape is not None else [len(data)], "datatype": datatype, "data": data,
            **extra}


BINARY_HEADER = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32",
                                        "parameters": {"binary_data_size": 8}}]}).encode()
FAULTS = {
    "not json": (b"{nope", None, "malformed inference request"),
    "no inputs": (b'{"inputs": []}', None, "malformed inference request"),
    "unknown field": (json.dumps({"inputs": [_input([1])], "extra": 1}).encode(), None, "malformed"),
    "negative dim": (_json(_input([1], shape=[-1])), None, "greater than or equal to 0"),
    "unknown datatype": (_json(_input([1], "INT128")), None, "the protocol's datatypes are"),
    "floats for INT64": (_json(_input([1.5, 2])), None, "give integers"),
    "bools for FP32": (_json(_input([True], "FP32")), None, "give numbers"),
    "numbers for BOOL": (_json(_input([1], "BOOL")), None, "give true/false"),
    "strings for INT64": (_json(_input(["1"])), None, "give integers"),
    "objects in data": (_json(_input([{"a": 1}])), None, "give integers"),
    "overflow": (_json(_input([2 ** 40], "INT32")), None, "does not fit in INT32"),
    "shape and data disagree": (_json(_input([1, 2, 3], shape=[2, 2])), None, "the shape and the data must agree"),
    "no data": (_json({"name": "x", "shape": [1], "datatype": "FP32"}), None, "neither 'data' nor"),
    "twice": (_json(_input([1]), _input([2])), None, "is given twice"),
    "header length past the body": (BINARY_HEADER, "9999", "must give the length of the JSON part"),
    "header length not a number": (BINARY_HEADER, "ten", "must give the length of the JSON part"),
    "binary data missing": (BINARY_HEADER + b"\0" * 4, str(len(BINARY_HEADER)), "only 4 bytes of binary data"),
    "binary data left over": (BINARY_HEADER + b"\0" * 12, str(len(BINARY_HEADER)), "4 bytes of binary data follow"),
}


@pytest.mark.parametrize("body, header, message", FAULTS.values(), ids=FAULTS.keys())
def test_malformed_requests_are_named_4xx_errors(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(body, header)
    assert caught.value.status == 400
    assert message in str(caught.value)


def test_a_well_formed_binary_request_passes_the_same_checks() -> None:
    # the twin of the binary faults above: the right byte count decodes
    _, tensors = parse_request(BINARY_HEADER + np.array([3, -4], "<i4").tobytes(), str(len(BINARY_HEADER)))
    np.testing.assert_array_equal(tensors["x"], [3, -4])
    assert HEADER_LENGTH == "Inference-Header-Content-Length"
