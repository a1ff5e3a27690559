#!/usr/bin/env bash
# The GPU measurements still missing from experiments/results (issues 3, 7 and 27), for one H100/H200 with 16
# cores: `bash experiments/gpu_pending.sh [dense|throughput|workers|retrieval|all]` from the repository root,
# with lookalike and its dependencies importable. Each part takes under 10 minutes (the device tool's
# limit per command); each step has its own time limit and appends its Markdown section to $OUT.
set -u
OUT=$(realpath "${OUT:-experiments/results}")
part=${1:-all}
bench() { (cd experiments && timeout "$1" python bench_throughput.py --gpu --images /tmp/jpegs --steps 150 --warmup 50 \
    --configs "resnet50 224px b256" --switches-only --timeout 100 --out "$OUT/throughput.md" "${@:2}"); }
if [[ $part == dense || $part == all ]]; then
  # 27: the static step's first part, semi-hard triplets as dense masked operations (no host reads in the
  # loss): end to end against the default (PML's miner and loss) in the same run, and the host-wait census
  bench 300 --workers 15 --switch-names default "dense semi-hard triplet loss"
  timeout 120 python experiments/bench_step_overhead.py --census --model resnet50 --out "$OUT/throughput.md" \
      --overrides loss=triplet_dense miner=none
fi
if [[ $part == throughput || $part == all ]]; then
  # 7: the bookkeeping without host waits (FusedEMA, the non-finite skip on the device, the progress bar's
  # host copy) end to end, with the loader alone; the micro-benchmark and the host-wait census on the GPU;
  # Lightning's profile of the step
  bench 300 --workers 15 --switch-names default "resize cache 256 px"
  timeout 60 python experiments/bench_step_overhead.py --model resnet50 --out "$OUT/throughput.md"
  timeout 120 python experiments/bench_step_overhead.py --census --model resnet50 --out "$OUT/throughput.md"
  args=$(cd experiments && python -c "from pathlib import Path; from bench_throughput import _train_overrides as o
print(' '.join(o(('', 'resnet50', 'resnet50', 224, 256), Path('/tmp/jpegs'), 15, 150, True, '/tmp/profile')))")
  timeout 150 python train.py $args data.resize_cache=256 +trainer.profiler=simple hydra.run.dir=/tmp/profile/run \
      2>&1 | sed 's/  */ /g' | grep -A24 "FIT Profiler" | cut -c1-160 > "$OUT/profile.txt"
fi
if [[ $part == workers || $part == all ]]; then
  # 7: fewer loader workers than cores, with the resize cache; torch.compile with the fused bookkeeping
  bench 500 --workers 12 --switch-names default "resize cache 256 px" "torch.compile on"
fi
if [[ $part == retrieval || $part == all ]]; then
  # 3: 100k x 512 leave-one-out against FAISS on the 16 cores and PML's AccuracyCalculator
  timeout 400 python experiments/bench_retrieval.py --sizes 100000 --device cuda \
      --methods lookalike-torch lookalike-faiss pml --timeout 120 --out "$OUT/retrieval.md"
fi
