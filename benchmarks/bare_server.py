"""The floor for bench_serve.py: a bare FastAPI endpoint that calls onnxruntime directly, no batching.

    python benchmarks/bare_server.py artifacts/minilm/model.onnx 8100

It takes the same Open Inference Protocol JSON request as ``zoo serve`` (so both
get the same bytes from the load generator) and does the least a hand-written
endpoint would: parse, one ``session.run`` per request in FastAPI's thread pool
(a plain ``def`` endpoint), answer with JSON.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI

DTYPES = {"INT64": np.int64, "FP32": np.float32}


def create_app(model_path: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict[str, Any]) -> dict[str, Any]:
        feed = {t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
                for t in body["inputs"]}
        outputs = session.run(names, feed)
        return {"model_name": name, "outputs": [
            {"name": n, "shape": list(v.shape), "datatype": "FP32", "data": v.reshape(-1).tolist()}
            for n, v in zip(names, outputs)]}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)
