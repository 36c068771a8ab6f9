#!/usr/bin/env bash
# ModelNet40 pipeline on 1 and 2 GPUs (torchrun, NCCL) on a larger synthetic
# set in the bundled format; prints seconds per epoch from each log.csv.
# COMMIT names the tree's commit where git cannot (see run_gpu.sh).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/ddp}
RUNS=${RUNS:-/tmp}
COMMIT=${COMMIT:-$(git describe --always --dirty 2>/dev/null)}
mkdir -p $OUT
python3 scripts/make_sample_data.py --out /tmp/mnbig --modelnet-split 100 10 --modelnet-only
common="--root /tmp/mnbig/modelnet40_sample --epochs 3 --preset paper --amp bf16 --no-progress --val-ratio 0.1"
python3 examples/modelnet40.py $common --batch-size 32 --out $RUNS/g1 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 16 --out $RUNS/g2_same 2>&1 | tail -2
torchrun --standalone --nproc_per_node 2 examples/modelnet40.py $common --batch-size 32 --out $RUNS/g2_weak 2>&1 | tail -2
for r in g1 g2_same g2_weak; do echo "== $r"; cat $RUNS/$r/log.csv; done
# One record per run, with its provenance (torch, commit, dirty, date and
# the run's own flags: the example's, less --out), added to $OUT/ddp.json.
python3 - "$OUT/ddp.json" "$RUNS" "$COMMIT" "$common" <<'PY'
import csv, sys
import torch
sys.path.insert(0, 'benchmarks')
from _common import add_to_results, device_name, run_provenance
path, root, commit, common = sys.argv[1:5]
# torch, commit, dirty and date; the flags are each run's own (this
# process's arguments are paths).
stamp = {k: v for k, v in run_provenance(commit or None).items()
         if k != 'flags'}
device = device_name(torch.device('cuda' if torch.cuda.is_available()
                                  else 'cpu'))
runs = []
for run, gpus, bs, scaling in (('g1', 1, 32, None),
                               ('g2_same', 2, 16, 'same global batch'),
                               ('g2_weak', 2, 32, 'same batch per GPU')):
    with open(f'{root}/{run}/log.csv') as f:
        epochs = [{k: float(v) for k, v in row.items()}
                  for row in csv.DictReader(f)]
    launcher = 'python' if gpus == 1 else \
        f'torchrun --standalone --nproc_per_node {gpus}'
    runs.append(dict(gpus=gpus, batch_size_per_gpu=bs, scaling=scaling,
                     device=device, **stamp,
                     launcher=launcher, script='examples/modelnet40.py',
                     flags=f'{common} --batch-size {bs}', epochs=epochs))
add_to_results(path, runs, lambda r: (r['gpus'], r['batch_size_per_gpu'],
                                      r['device'], r['flags']))
PY
