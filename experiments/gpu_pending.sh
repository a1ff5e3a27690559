#!/usr/bin/env bash
# The GPU measurements still missing from experiments/results (issues 3, 5 and 7), for one H100 with 16
# cores: `bash experiments/gpu_pending.sh [throughput|retrieval|search|all]` from the repository root,
# with lookalike and its dependencies importable. Each part takes under 10 minutes (the device tool's
# limit per command); each step has its own time limit and appends its Markdown section to $OUT.
set -u
OUT=$(realpath "${OUT:-experiments/results}")
part=${1:-all}
if [[ $part == throughput || $part == all ]]; then
  # 7: loader alone and the decode-once resize cache, resnet50 and Lite0 at batch 256, 15 loader workers
  (cd experiments
   timeout 240 python bench_throughput.py --gpu --images /tmp/jpegs --workers 15 --steps 150 --warmup 50 \
       --configs "resnet50 224px b256" --switches-only --switch-names default "resize cache 256 px" \
       --timeout 100 --out "$OUT/throughput.md"
   timeout 240 python bench_throughput.py --gpu --images /tmp/jpegs --workers 15 --steps 150 --warmup 50 \
       --configs "lite0 224px b256" --switch-config "lite0 224px b256" --switches-only \
       --switch-names default "resize cache 256 px" --timeout 100 --out "$OUT/throughput.md"
   timeout 60 python bench_throughput.py --gpu --images /tmp/jpegs --decode-scaling 15 --resize-cache 256)
fi
if [[ $part == retrieval || $part == all ]]; then
  # 3: 1M x 512 exact leave-one-out with the larger GPU blocks; 100k against FAISS (16 cores) and PML
  timeout 200 python experiments/bench_retrieval.py --sizes 1000000 --device cuda --methods lookalike-torch \
      --timeout 190 --out "$OUT/retrieval.md"
  timeout 200 python experiments/bench_retrieval.py --sizes 100000 --device cuda \
      --methods lookalike-torch lookalike-faiss pml --timeout 60 --out "$OUT/retrieval.md"
fi
if [[ $part == search || $part == all ]]; then
  # 5: query latency and recall at 10k and 1M (FAISS on the 16 cores, torch exact on the GPU)
  timeout 560 python experiments/bench_search.py --sizes 10000 1000000 --single 100 --out "$OUT/search.md"
fi
