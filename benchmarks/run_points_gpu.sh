#!/usr/bin/env bash
# Point-cloud GPU measurements (results under $OUT or benchmarks/results).
#   STEPS=tests,kernels,compiled,pipelined   (default) GPU tests, the
#       relative-bias kernels alone (FlexAttention and samsa_geo's Triton
#       kernel, each in its own process: bias_kernels_cuda.json) and the
#       importance scorer alone, then the point benchmark compiled (bf16
#       params), each call timed alone and calls back to back;
#   STEPS=graphs                    the point benchmark compiled with CUDA
#       graphs (reduce-overhead), then the layers with max-autotune;
#   STEPS=eager                     the point benchmark eager, with bf16
#       parameters (each call alone, and back to back) and under autocast.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
STEPS=${STEPS:-tests,kernels,compiled,pipelined}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name --format=csv,noheader
if has tests; then
  timeout 240 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider -p no:logging --tb=short > $OUT/gpu_tests.log 2>&1
  grep -E "^E |passed|failed" $OUT/gpu_tests.log | head -12
fi
if has kernels; then
  rm -f $OUT/bias_kernels.jsonl
  for a in "flex" "triton" "triton --exact-math" "flex --normals" "triton --normals"; do
    timeout 120 python3 benchmarks/flex_options.py --kernel $a >> $OUT/bias_kernels.jsonl 2>/dev/null \
      || echo "{\"kernel\": \"$a\", \"error\": \"process failed\"}" >> $OUT/bias_kernels.jsonl
  done
  python3 -c "import json; json.dump([json.loads(l) for l in open('$OUT/bias_kernels.jsonl')], open('$OUT/bias_kernels_cuda.json', 'w'), indent=1)"
  rm -f $OUT/bias_kernels.jsonl
  cut -c1-300 $OUT/bias_kernels_cuda.json
  timeout 120 python3 benchmarks/scorer_kernel.py --out $OUT/scorer_kernel_cuda.json > $OUT/scorer.log 2>&1; tail -10 $OUT/scorer.log
fi
ONLY=samsa_point_classifier_small,samsa_point_classifier_small_ri,samsa_point_classifier_paper,samsa_conv_layer,samsa_conv_layer_relbias,point_transformer_conv_layer
if has compiled; then
  timeout 230 python3 benchmarks/points.py --device cuda --weights bf16 --compile --only $ONLY --out $OUT/points_cuda_bf16_weights_compiled.json > $OUT/p3.log 2>&1; tail -7 $OUT/p3.log
fi
if has pipelined; then
  timeout 230 python3 benchmarks/points.py --device cuda --weights bf16 --compile --pipelined --only $ONLY --out $OUT/points_cuda_bf16_weights_compiled_pipelined.json > $OUT/p6.log 2>&1; tail -7 $OUT/p6.log
fi
if has graphs; then
  timeout 230 python3 benchmarks/points.py --device cuda --weights bf16 --compile-mode reduce-overhead --only $ONLY --out $OUT/points_cuda_bf16_weights_cudagraphs.json > $OUT/p4.log 2>&1; tail -7 $OUT/p4.log
  timeout 300 python3 benchmarks/points.py --device cuda --weights bf16 --compile-mode max-autotune --only samsa_conv_layer,samsa_conv_layer_relbias,point_transformer_conv_layer --out $OUT/points_cuda_bf16_weights_maxautotune.json > $OUT/p5.log 2>&1; tail -4 $OUT/p5.log
fi
if has eager; then
  timeout 150 python3 benchmarks/points.py --device cuda --weights bf16 --out $OUT/points_cuda_bf16_weights.json > $OUT/p2.log 2>&1; tail -12 $OUT/p2.log
  timeout 150 python3 benchmarks/points.py --device cuda --weights bf16 --pipelined --out $OUT/points_cuda_bf16_weights_pipelined.json > $OUT/p7.log 2>&1; tail -12 $OUT/p7.log
  timeout 150 python3 benchmarks/points.py --device cuda --out $OUT/points_cuda.json > $OUT/p1.log 2>&1; tail -12 $OUT/p1.log
fi
