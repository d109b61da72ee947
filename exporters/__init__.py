"""The torch side of an artifact: export (``onnx``), verification (``verify``), optimisation (``optimize``).

Layer: beside ``zoo.train``, above the runtime, sources and tasks, below the CLI (README "Architecture").
"""
