#!/usr/bin/env bash
# The fast path's numbers (issue 20) in one sitting, on a quiet CPU, each result under benchmarks/results/:
#
#   1. what one verify forward costs per frame count, fast and eager (tree_forward_cost.py)
#   2. where a forward's time goes (forward_profile.py)
#   3. mmspec autoregressive against HF generate, dynamic and static cache (text_vs_hf.py)
#   4. the text, speech and image bench suites on the fast path, and the text suite's best method on the eager path
#   5. how often fast greedy output differs from eager greedy output and HF generate (fast_exactness.py)
#   6. batches of 8 (issue 23): the zoo heads and prompt lookup at several k, rows that ended dropped or kept
#   7. one drafted frame of the EAGLE layers, int8 against prepacked products (eagle_step.py)
#   8. the decoder stack as one C call against layer by layer, text and speech (decoder_ab.py)
#
#   [S=_s9] bash benchmarks/fast_session.sh [PART ...]   (parts: forward profile hf text speech image exactness batch
#                                                        eagle decoder; default all; S: a suffix for the result files)
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
S=${S:-}
mkdir -p "$R"
PY=${PY:-python}
MMSPEC=${MMSPEC:-mmspec}
parts=${*:-forward profile hf text speech image exactness batch eagle decoder}
for part in $parts; do
  echo "== $part ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
  case $part in
    forward)
      $PY benchmarks/tree_forward_cost.py --fast --json $R/tree_forward_cost_fast$S.json
      $PY benchmarks/tree_forward_cost.py --no-fast --json $R/tree_forward_cost_eager$S.json ;;
    profile)
      $PY benchmarks/forward_profile.py --json $R/forward_profile$S.json ;;
    hf)
      $PY benchmarks/text_vs_hf.py --prompts 20 --new 128 --repeats 1 \
        --pairs "autoregressive,autoregressive static,prompt lookup,prompt lookup tree" --json $R/text_vs_hf_fast$S.json ;;
    text)
      $MMSPEC bench --suite text --fast --repeats 2 --out bench-out/text-fast \
        --methods "prompt-lookup,prompt-lookup k=8,prompt-lookup tree=8,heads,prompt-lookup|heads,prompt-lookup|heads k=16"
      cp bench-out/text-fast/results.json $R/bench_text_fast$S.json
      $MMSPEC bench --suite text --no-fast --repeats 2 --out bench-out/text-eager --methods "prompt-lookup|heads k=16"
      cp bench-out/text-eager/results.json $R/bench_text_eager$S.json ;;
    speech)
      $MMSPEC bench --suite speech --fast --repeats 2 --out bench-out/speech-fast --methods "heads / greedy,heads / greedy k=4,heads / speculative"
      cp bench-out/speech-fast/results.json $R/bench_speech_fast$S.json ;;
    image)
      $MMSPEC bench --suite image --fast --repeats 2 --out bench-out/image-fast \
        --methods "heads / speculative,sjd (init random),coupled k=16 (init above),coupled k=32 (init above),coupled (init above)"
      cp bench-out/image-fast/results.json $R/bench_image_fast$S.json ;;
    batch)
      for K in 2 4 8; do
        $MMSPEC bench --suite text --batch 8 --prompts 8 --k $K --max-new-tokens 64 --methods "prompt-lookup,heads" \
          --repeats 2 --out bench-out/batch8-k$K
        cp bench-out/batch8-k$K/results.json $R/bench_text_batch8_k${K}$S.json
      done
      $MMSPEC bench --suite text --batch 8 --prompts 8 --k 8 --max-new-tokens 64 --methods "prompt-lookup,heads" \
        --repeats 2 --no-compact --out bench-out/batch8-k8-full
      cp bench-out/batch8-k8-full/results.json $R/bench_text_batch8_k8_nocompact$S.json ;;
    eagle)
      $PY benchmarks/eagle_step.py --modality text
      $PY benchmarks/eagle_step.py --modality speech ;;
    decoder)
      $PY benchmarks/decoder_ab.py --modality text
      $PY benchmarks/decoder_ab.py --modality speech --methods "none:2,heads:2" ;;
    exactness)
      $PY benchmarks/fast_exactness.py --json $R/fast_exactness$S.json ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
