"""Open Inference Protocol (KServe "v2") REST messages, and tensors to and from them.

The protocol (kserve/kserve docs/predict-api/v2/required_api.md) sends tensors as
``{"name", "shape", "datatype", "data"}`` with ``data`` a flat or nested JSON
array in row-major order. Triton's binary tensor data extension, which
``tritonclient.http`` uses by default, sends the JSON header first and the raw
little-endian tensor bytes after it: the ``Inference-Header-Content-Length``
header gives the JSON's length, ``parameters.binary_data_size`` each tensor's
byte count, in the order the tensors are listed. Outputs come back the same way
when the request asks with ``binary_data`` (per output) or ``binary_data_output``
(for all).

The pydantic models below are what FastAPI puts in the OpenAPI schema; the
request body itself is read by hand, since the binary extension puts bytes
after the JSON.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.serve.errors import RequestError
from zoo.serve.names import DATATYPES, datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]

Parameter = bool | int | float | str
Dim = Annotated[int, Field(ge=0)]


# ---------------------------------------------------------------- messages (for the OpenAPI schema)


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable-size axis")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[Dim]
    datatype: str
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = Field(default=None, description="row-major values, flat or nested; absent when "
                                   "the tensor is sent as binary data (parameters.binary_data_size)")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Parameter] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


# ---------------------------------------------------------------- requests


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, np.ndarray]]:
    """The request object and its input tensors, from JSON alone or JSON + binary tensor data."""
    json_part, binary = _split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise RequestError(f"malformed inference request: {_first_problems(exc)}; see the protocol's "
                           "$inference_request (GET /openapi.json)") from None
    reader = _BinaryReader(binary)
    tensors: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise RequestError(f"input '{tensor.name}' is given twice; give each input once")
        tensors[tensor.name] = decode_tensor(tensor, reader)
    reader.finish()
    return request, tensors


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise RequestError(f"{HEADER_LENGTH} is '{header_length}', but the body has {len(body)} bytes; it must "
                           "give the length of the JSON part that starts the body")
    return body[:length], memoryview(body)[length:]


def _first_problems(exc: ValidationError, limit: int = 3) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:limit]]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


class _BinaryReader:
    """Hands out the binary tensor data after the JSON header, tensor by tensor, in request order."""

    def __init__(self, data: memoryview):
        self.data, self.offset = data, 0

    def take(self, name: str, size: int) -> memoryview:
        if size < 0 or self.offset + size > len(self.data):
            raise RequestError(f"input '{name}' declares binary_data_size {size}, but only "
                               f"{len(self.data) - self.offset} bytes of binary data are left in the body")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise RequestError(f"{len(self.data) - self.offset} bytes of binary data follow the JSON header that "
                               "no input claims (binary_data_size); the sizes must add up to the body")


def decode_tensor(tensor: RequestInput, reader: _BinaryReader) -> np.ndarray:
    """One input tensor as a numpy array of its declared shape and datatype."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise RequestError(f"input '{tensor.name}' has datatype '{tensor.datatype}'; the protocol's datatypes "
                           f"are {', '.join(DATATYPES)}")
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise RequestError(f"input '{tensor.name}': binary_data_size must be an integer, got {size!r}")
        chunk = reader.take(tensor.name, size)
        flat = _bytes_elements(tensor.name, chunk) if tensor.datatype == "BYTES" else _fixed(tensor, dtype, chunk)
    elif tensor.data is not None:
        flat = _json_elements(tensor, dtype)
    else:
        raise RequestError(f"input '{tensor.name}' has neither 'data' nor parameters.binary_data_size")
    if flat.size != count:
        raise RequestError(f"input '{tensor.name}' has shape {tensor.shape} ({count} elements) but carries "
                           f"{flat.size} elements; the shape and the data must agree")
    return flat.reshape(tensor.shape)


def _fixed(tensor: RequestInput, dtype: np.dtype, chunk: memoryview) -> np.ndarray:
    if len(chunk) % dtype.itemsize:
        raise RequestError(f"input '{tensor.name}': {len(chunk)} bytes is not a whole number of "
                           f"{tensor.datatype} elements ({dtype.itemsize} bytes each)")
    # copy: the body buffer is freed with the request, and onnxruntime wants native byte order
    return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="))


def _bytes_elements(name: str, chunk: memoryview) -> np.ndarray:
    """BYTES in binary: each element is a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise RequestError(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        if offset + 4 + length > len(chunk):
            raise RequestError(f"input '{name}': a BYTES element claims {length} bytes past the end of its data")
        items.append(bytes(chunk[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return np.array(items, dtype=object)


def _json_elements(tensor: RequestInput, dtype: np.dtype) -> np.ndarray:
    flat = _flatten(tensor.data)
    if tensor.datatype == "BYTES":
        return np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object)
    if not flat:
        return np.zeros(0, dtype=dtype)
    try:
        values = np.array(flat)  # numpy infers bool, int64, float64, or str/object for anything else
    except (ValueError, TypeError):
        values = np.array([repr(v) for v in flat])
    if values.dtype.kind not in _ACCEPTS[dtype.kind]:
        what = {"b": "true/false", "f": "numbers"}.get(dtype.kind, "integers")
        raise RequestError(f"input '{tensor.name}' is {tensor.datatype} but its data holds "
                           f"{values.dtype.name} values; give {what}")
    if dtype.kind in "iu" and (values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
        raise RequestError(f"input '{tensor.name}': a value does not fit in {tensor.datatype}")
    return values.astype(dtype)


# which inferred numpy kinds each target kind takes: no silent bool<->number or float->int conversions
_ACCEPTS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists to one row-major list (the protocol allows both layouts)."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


# ---------------------------------------------------------------- responses


def wants_binary(request: InferenceRequest) -> dict[str, bool] | bool:
    """Per requested output whether it goes back as binary data; a bool when no outputs are named."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return default
    return {o.name: bool((o.parameters or {}).get("binary_data", default)) for o in request.outputs}


def encode_response(model_name: str, request: InferenceRequest, outputs: dict[str, np.ndarray],
                    ) -> tuple[bytes, int | None]:
    """The response body and, when any tensor goes as binary data, the length of its JSON part."""
    binary = wants_binary(request)
    header: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs: list[bytes] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
        as_binary = binary if isinstance(binary, bool) else binary[name]
        if as_binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        header["outputs"].append(entry)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
