#!/usr/bin/env bash
# Point-cloud GPU measurements, added to the result files of their
# benchmarks (points.json, bias_kernels.json, scorer_kernel.json) under $OUT
# or benchmarks/results, each record with its provenance (COMMIT, passed to
# every benchmark as --commit, names the tree's commit where git cannot: see
# run_gpu.sh); logs in $LOGS.
#   STEPS=tests,kernels,compiled,pipelined   (default) GPU tests, the
#       relative-bias kernels alone (FlexAttention and samsa_geo's Triton
#       kernel, each in its own process: bias_kernels.json) and the
#       importance scorer alone, then the point benchmark compiled (bf16
#       params), each call timed alone and calls back to back;
#   STEPS=graphs                    the point benchmark compiled with CUDA
#       graphs (reduce-overhead), then the layers with max-autotune;
#   STEPS=eager                     the point benchmark eager, with bf16
#       parameters (each call alone, and back to back) and under autocast.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
COMMIT=${COMMIT:-$(git describe --always --dirty 2>/dev/null)}
LOGS=${LOGS:-/tmp/samsa_points_logs}
mkdir -p $OUT $LOGS
STEPS=${STEPS:-tests,kernels,compiled,pipelined}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name --format=csv,noheader
if has tests; then
  timeout 240 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider -p no:logging --tb=short > $LOGS/gpu_tests.log 2>&1
  grep -E "^E |passed|failed" $LOGS/gpu_tests.log | head -12
fi
if has kernels; then
  rm -f $LOGS/bias_kernels.jsonl
  for a in "flex" "triton" "triton --exact-math" "flex --normals" "triton --normals"; do
    timeout 120 python3 benchmarks/flex_options.py --kernel $a --commit "$COMMIT" >> $LOGS/bias_kernels.jsonl 2>/dev/null \
      || echo "{\"kernel\": \"$a\", \"flags\": \"--kernel $a\", \"error\": \"process failed\"}" >> $LOGS/bias_kernels.jsonl
  done
  python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); from _common import write_records; write_records([json.loads(l) for l in open('$LOGS/bias_kernels.jsonl')], '$OUT/bias_kernels.json', commit='$COMMIT' or None)"
  cut -c1-300 $LOGS/bias_kernels.jsonl
  rm -f $LOGS/bias_kernels.jsonl
  timeout 120 python3 benchmarks/scorer_kernel.py --commit "$COMMIT" --out $OUT/scorer_kernel.json > $LOGS/scorer.log 2>&1; tail -10 $LOGS/scorer.log
fi
ONLY=samsa_point_classifier_small,samsa_point_classifier_small_ri,samsa_point_classifier_paper,samsa_conv_layer,samsa_conv_layer_relbias,point_transformer_conv_layer
if has compiled; then
  timeout 230 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --compile --only $ONLY --out $OUT/points.json > $LOGS/p3.log 2>&1; tail -7 $LOGS/p3.log
fi
if has pipelined; then
  timeout 230 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --compile --pipelined --only $ONLY --out $OUT/points.json > $LOGS/p6.log 2>&1; tail -7 $LOGS/p6.log
fi
if has graphs; then
  timeout 230 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --compile-mode reduce-overhead --only $ONLY --out $OUT/points.json > $LOGS/p4.log 2>&1; tail -7 $LOGS/p4.log
  timeout 300 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --compile-mode max-autotune --only samsa_conv_layer,samsa_conv_layer_relbias,point_transformer_conv_layer --out $OUT/points.json > $LOGS/p5.log 2>&1; tail -4 $LOGS/p5.log
fi
if has eager; then
  timeout 150 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --out $OUT/points.json > $LOGS/p2.log 2>&1; tail -12 $LOGS/p2.log
  timeout 150 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --weights bf16 --pipelined --out $OUT/points.json > $LOGS/p7.log 2>&1; tail -12 $LOGS/p7.log
  timeout 150 python3 benchmarks/points.py --device cuda --commit "$COMMIT" --out $OUT/points.json > $LOGS/p1.log 2>&1; tail -12 $LOGS/p1.log
fi
