#!/usr/bin/env bash
# What a session lent a GPU runs to finish the GPU-only parts of issues 7 (text) and 5 (speech):
# one device call per part, each well inside the device tool's 10-minute command limit.
#
#   text    retrain the text drafter against the shipped code-target (`mmspec.text.recipe distill`, three
#           drafter shapes, ~6 min on one H100) and send back the kept drafter and the training log.
#   speech  the speech suite and the speech forward-cost probe on the GPU (~4 min).
#
# On the device tool (wheels: see BENCHMARKS.md, "GPU"):
#   text:   carry [".whl", ".gpu/text"], command: OUT=$OUT bash benchmarks/gpu_session.sh text
#   speech: carry [".whl"],              command: OUT=$OUT bash benchmarks/gpu_session.sh speech
#   engines: carry [".whl"],            command: OUT=$OUT bash benchmarks/gpu_session.sh engines  (issue 22; vLLM must be
#           installed on the device for its half, else engine_compare.py says so)
#   fast:   carry [".whl"],              command: OUT=$OUT bash benchmarks/gpu_session.sh fast     (issue 20: fast rows)
# Smoke test on a CPU (tiny, seconds): DEVICE=cpu QUICK=1 OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh text
#
# Back here, for `text`: copy model.safetensors and config.json into text/zoo/code-draft/ and
# train_log.json into text/zoo/, then `python -m mmspec.text.recipe evaluate` and the text benchmarks
# (BENCHMARKS.md) on the CPU.
set -euo pipefail
part=${1:?usage: gpu_session.sh text|speech|engines|fast}
OUT=${OUT:?set OUT to the folder that receives the results}
DEVICE=${DEVICE:-cuda}
ROOT=$PWD
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# 1. mmspec importable without installing it (the device image has torch, transformers, torchaudio; carried
#    wheels add encodec and friends). The package maps text/, image/, speech/ and demos/ into mmspec.*.
if ! python3 -c "import encodec" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import mmspec" 2>/dev/null; then
    mkdir -p /tmp/mm/mmspec
    for f in mmspec/*; do ln -sfn "$ROOT/$f" /tmp/mm/mmspec/; done
    for m in text image speech demos; do ln -sfn "$ROOT/$m" "/tmp/mm/mmspec/$m"; done
    export PYTHONPATH=/tmp/mm${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, encodec, mmspec.bench as b; print('device:', b.hardware('$DEVICE'), '| torch', torch.__version__)"

case "$part" in
text)
    # 2. The drafter, retrained against the shipped target on a scratch copy of the zoo.
    test -f .gpu/text/train.bin || { echo "no .gpu/text: run 'mmspec zoo prepare text' here and carry .gpu/text"; exit 2; }
    zoo=/tmp/zoo-text
    rm -rf "$zoo" && mkdir -p "$zoo"
    cp -r text/zoo/code-target text/zoo/code-draft text/zoo/train_log.json "$zoo/"
    extra=()
    if [ -n "${QUICK:-}" ]; then extra=(--quick --variants 1x32x64,2x32x48); fi
    python3 -m mmspec.text.recipe distill --data .gpu/text --out "$zoo" --device "$DEVICE" \
        --time-budget "${BUDGET:-330}" "${extra[@]}" 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tee "$OUT/text_distill.log"
    cp "$zoo/code-draft/model.safetensors" "$zoo/code-draft/config.json" "$zoo/train_log.json" "$OUT/"
    ;;
speech)
    # 3. Speech on the GPU: the method suite, then what one forward costs by frames checked.
    python3 -m mmspec.cli bench --suite speech --device "$DEVICE" --out "$OUT/speech" --repeats 3 --prompts 6 \
        2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tee "$OUT/speech_bench.log"
    python3 benchmarks/speech_forward_cost.py --device "$DEVICE" --repeats 100 \
        --json "$OUT/speech_forward_cost_gpu.json" | tee "$OUT/speech_forward_cost.log"
    ;;
engines)
    # 4. Issue 22: an eagle1 layer (the engines' EAGLE-1 layout) for the zoo target, trained here, then vLLM and
    #    mmspec on the same prompts (benchmarks/engine_compare.py; it says so and exits 0 without vLLM).
    heads=/tmp/heads-eagle1
    python3 -m mmspec.cli heads train --target zoo:code-target --kind eagle1 --out "$heads" --device "$DEVICE" \
        --time-budget "${BUDGET:-300}" --max-tokens 2500000 --batch 16 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tee "$OUT/eagle1_train.log"
    mkdir -p "$OUT/code-heads-eagle1" && cp "$heads/model.safetensors" "$heads/config.json" "$OUT/code-heads-eagle1/"
    python3 benchmarks/engine_compare.py --heads "$heads" --prompts 20 --new 128 --json "$OUT/engine_compare.json" \
        2>&1 | tee "$OUT/engine_compare.log"
    ;;
fast)
    # 5. Issue 20 on the GPU: what a verify forward costs per frame count on both paths (fast=True runs the fast
    #    path's static cache with plain products on CUDA; CUDA graphs are not built yet), and the text suite's
    #    best lossless method on both paths.
    for path in fast no-fast; do
        python3 benchmarks/tree_forward_cost.py --device "$DEVICE" --$path --json "$OUT/tree_forward_cost_gpu_$path.json" \
            | tee "$OUT/tree_forward_cost_gpu_$path.log"
        python3 -m mmspec.cli bench --suite text --device "$DEVICE" --$path --out "$OUT/text_$path" --repeats 2 \
            --methods "prompt-lookup|heads k=16" 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tee "$OUT/text_bench_$path.log"
    done
    ;;
*)
    echo "unknown part '$part': text, speech, engines or fast"; exit 2 ;;
esac
ls -la "$OUT"
