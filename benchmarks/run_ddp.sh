#!/usr/bin/env bash
# ModelNet40 pipeline on 1 and 2 GPUs (torchrun, NCCL) on a larger synthetic
# set in the bundled format; prints seconds per epoch from each log.csv.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/ddp}
python3 scripts/make_sample_data.py --out /tmp/mnbig --modelnet-split 100 10 --modelnet-only
common="--root /tmp/mnbig/modelnet40_sample --epochs 3 --preset paper --amp bf16 --no-progress --val-ratio 0.1"
python3 examples/modelnet40.py $common --batch-size 32 --out /tmp/g1 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 16 --out /tmp/g2_same 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 32 --out /tmp/g2_weak 2>&1 | tail -2
for r in g1 g2_same g2_weak; do echo "== $r"; cat /tmp/$r/log.csv; cp /tmp/$r/log.csv $OUT/ddp_$r.csv 2>/dev/null; done
