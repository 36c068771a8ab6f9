#!/usr/bin/env bash
# ModelNet40 pipeline on 1 and 2 GPUs (torchrun, NCCL) on a larger synthetic
# set in the bundled format; prints seconds per epoch from each log.csv.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/ddp}
mkdir -p $OUT
python3 scripts/make_sample_data.py --out /tmp/mnbig --modelnet-split 100 10 --modelnet-only
common="--root /tmp/mnbig/modelnet40_sample --epochs 3 --preset paper --amp bf16 --no-progress --val-ratio 0.1"
python3 examples/modelnet40.py $common --batch-size 32 --out /tmp/g1 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 16 --out /tmp/g2_same 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 32 --out /tmp/g2_weak 2>&1 | tail -2
for r in g1 g2_same g2_weak; do echo "== $r"; cat /tmp/$r/log.csv; done
# One record per run, with its provenance, added to $OUT/ddp.json.
python3 - "$OUT/ddp.json" <<'PY'
import csv, sys
import torch
sys.path.insert(0, 'benchmarks')
from _common import add_to_results, run_provenance
runs = []
for run, gpus, bs, scaling in (('g1', 1, 32, None),
                               ('g2_same', 2, 16, 'same global batch'),
                               ('g2_weak', 2, 32, 'same batch per GPU')):
    with open(f'/tmp/{run}/log.csv') as f:
        epochs = [{k: float(v) for k, v in row.items()}
                  for row in csv.DictReader(f)]
    runs.append(dict(gpus=gpus, batch_size_per_gpu=bs, scaling=scaling,
                     device=torch.cuda.get_device_name(0), **run_provenance(),
                     epochs=epochs))
add_to_results(sys.argv[1], runs, lambda r: (r['gpus'], r['batch_size_per_gpu']))
PY
