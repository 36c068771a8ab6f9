#!/usr/bin/env bash
# Everything measured on a GPU, in one go: records added to the result file
# of each benchmark under $OUT or benchmarks/results (see docs/benchmarks.md).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# COMMIT names the tree's commit where git cannot (a copy without .git, or
# over an older checkout: git then reports its commit with -dirty); every
# benchmark gets it as --commit (an empty COMMIT leaves it to the script's
# git, which records null where git cannot tell), and records beside it
# whether git sees the tree differ from it ('dirty').
OUT=${OUT:-benchmarks/results}
LOGS=${LOGS:-/tmp}  # the logs of the steps
mkdir -p $OUT $LOGS
STEPS=${STEPS:-tests,attention,compiled,points,graph,ops,profile,layer,peers,scorer,launch}
COMMIT=${COMMIT:-$(git describe --always --dirty 2>/dev/null)}
SIZES=32x1024,8x4096,2x16384,1x65536,1x262144
on() { [[ ",$STEPS," == *",$1,"* ]]; }
# A profile's output headed by its command, GPU, commit and date:
# headed SCRIPT [ARGS].
headed() { echo "# python $* | GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) | commit: ${COMMIT:-unknown} | date: $(date +%F)"; python3 "$@" 2>&1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torch_geometric; print('torch', torch.__version__, '| pyg', torch_geometric.__version__)"
# The GPU suite file by file, each under TEST_LIMIT seconds, so that one
# slow or hung file leaves the others' results and tracebacks in the log;
# then the op tests that run their kernels compiled where CUDA is present
# (on the CPU, Triton's interpreter or PyTorch's path runs them).
TEST_LIMIT=${TEST_LIMIT:-300}
CUDA_OP_TESTS="tests/ops/test_triton.py tests/ops/test_layer_norm.py tests/ops/test_linear.py tests/ops/test_residual_affine.py tests/ops/test_residual_batch_norm.py"
# One test file under TEST_LIMIT seconds, logged under its name:
# test_file FILE [PYTEST OPTIONS].
test_file() { echo "=== $1" >> $LOGS/gpu_tests.log; timeout $TEST_LIMIT python3 -m pytest -q "${@:2}" $1 -p no:cacheprovider -s -rf --tb=short --durations=5 >> $LOGS/gpu_tests.log 2>&1 || echo "=== $1 exit $?" >> $LOGS/gpu_tests.log; }
on tests && { : > $LOGS/gpu_tests.log; for f in tests/gpu/test_*.py; do test_file $f -m gpu; done; for f in $CUDA_OP_TESTS; do test_file $f; done; }
on attention && { python3 benchmarks/attention.py --device cuda --commit "$COMMIT" --out $OUT/attention.json > $LOGS/attention_cuda.log 2>&1; }
on compiled && { python3 benchmarks/attention.py --device cuda --compile --compile-mode reduce-overhead --ops samsa_attention,sdpa --sizes 32x1024,128x150,1x65536 --commit "$COMMIT" --out $OUT/attention.json > $LOGS/attention_compiled.log 2>&1; }
on compiled && { tail -30 $LOGS/attention_compiled.log; }
on points && { OUT=$OUT COMMIT="$COMMIT" STEPS=kernels,compiled,eager bash benchmarks/run_points_gpu.sh; }
on graph && { python3 benchmarks/graph_step.py --device cuda --commit "$COMMIT" --out $OUT/graph_step.json 2>&1 | tail -8; }
on graph && { python3 benchmarks/graph_step.py --device cuda --ops samsa_graph_model_hints --optimizers fused --ab packed_attention,fused_gine --commit "$COMMIT" --out $OUT/graph_step.json 2>&1 | tail -6; }
on graph && { headed benchmarks/profile_graph_step.py --ops samsa_graph_model_hints,gps_graph_model,gine_graph_model > $OUT/profile_graph_step.txt; }
on graph && { python3 benchmarks/graph_scale.py --device cuda --commit "$COMMIT" --out $OUT 2>&1 | tail -6; }
on ops && { python3 benchmarks/ops.py --device cuda --commit "$COMMIT" --out $OUT/ops.json 2>&1 | tail -6; }
on profile && { headed benchmarks/profile_attention.py --n 65536 > $OUT/profile_attention.txt; }
# Whole layers (issue sizes), the fused path against the unfused one for
# single large sets, the layer's CUDA graphs against eager calls, and the
# profile of one forward (eager).
on layer && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch,full_layer --passes fwd,fwdbwd --commit "$COMMIT" --out $OUT/layer.json > $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch --passes fwdbwd --ops-backend torch --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch --passes fwdbwd --linear-min-elements 4611686018427387904 --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes 1x65536,1x262144 --ops samsa_conv_batch --passes fwd --ab fused_inference --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes 32x1024,8x4096,2x16384,1x65536 --ops samsa_conv_batch --passes fwd,fwdbwd --ab cuda_graphs --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
# Training on the sampled rows (from SAMPLED_ROWS_MIN_TOKENS tokens) against
# every token projected, and from 65,536 tokens; the tiles' attention
# kernels against PyTorch's SDPA, and SDPA's backends forced.
on layer && { python3 benchmarks/layer.py --device cuda --sizes 1x65536,1x262144 --ops samsa_conv_batch --passes fwdbwd --sampled-rows-min-tokens 4611686018427387904 --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes 1x65536,2x65536 --ops samsa_conv_batch --passes fwd,fwdbwd --sampled-rows-min-tokens 65536 --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
# 1 x 262,144 (2^26 input values) with the layer's CUDA graphs, beyond
# CUDA_GRAPH_MAX_ELEMENTS, the fused inference path beyond
# FUSED_MAX_SET_SIZE, against the default run's eager calls above.
on layer && { python3 benchmarks/layer.py --device cuda --sizes 1x262144 --ops samsa_conv_batch --passes fwd,fwdbwd --cuda-graph-max-elements 67108864 --fused-max-set-size 262144 --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch --passes fwd,fwdbwd --ab tile_attention --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; }
on layer && { for B in flash efficient; do python3 benchmarks/layer.py --device cuda --sizes 1x65536,1x262144 --ops samsa_conv_batch --passes fwd,fwdbwd --sdpa-backends $B --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer.log 2>&1; done; }
on layer && { python3 benchmarks/graph_inputs.py --sizes 32x1024,1x65536 --passes fwd,fwdbwd --commit "$COMMIT" --out $OUT/graph_inputs.json 2>&1 | tail -26; }
on layer && { headed benchmarks/profile_layer.py --sizes 32x1024,1x65536,1x262144 --ops samsa_conv_batch,full_layer --host --kernels 12 > $OUT/profile_layer.txt; }
# The whole layer against all its peers in one process (the full layer,
# GPSConv multihead up to --max-gps-n tokens per set and performer) with
# the small-graph epoch, eager; then SamsaConv and the full layer compiled
# (default mode).
on peers && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch,full_layer,gps_conv_multihead,gps_conv_performer --passes fwd,fwdbwd --graph-epoch --commit "$COMMIT" --out $OUT/layer.json > $LOGS/layer_peers.log 2>&1; }
on peers && { python3 benchmarks/layer.py --device cuda --sizes $SIZES --ops samsa_conv_batch,full_layer --passes fwd,fwdbwd --compile default --compile-only --commit "$COMMIT" --out $OUT/layer.json >> $LOGS/layer_peers.log 2>&1; }
on peers && { grep -E "^(samsa|full|gps)" $LOGS/layer_peers.log | tail -60; }
on scorer && { for T in 32768 65536 262144; do python3 benchmarks/scorer_kernel.py --tokens $T --commit "$COMMIT" --out $OUT/scorer_kernel.json 2>&1 | tail -14; done; }
on scorer && { for T in 32768 65536 262144; do python3 benchmarks/scorer_grad_kernel.py --tokens $T --commit "$COMMIT" --out $OUT/scorer_grad_kernel.json 2>&1 | tail -12; done; }
on scorer && { python3 benchmarks/batch_norm_kernel.py --commit "$COMMIT" --out $OUT/batch_norm_kernel.json 2>&1 | tail -14; }
on scorer && { python3 benchmarks/batch_norm_kernel.py --sweep --tokens 65536,262144 --commit "$COMMIT" 2>&1 | tail -32; }
on scorer && { python3 benchmarks/residual_affine_kernel.py --commit "$COMMIT" --out $OUT/residual_affine_kernel.json 2>&1 | tail -14; }
on scorer && { python3 benchmarks/tile_attention_kernel.py --commit "$COMMIT" --out $OUT/tile_attention_kernel.json 2>&1 | tail -48; }
on scorer && { python3 benchmarks/tile_attention_kernel.py --packed --commit "$COMMIT" --out $OUT/tile_attention_kernel.json 2>&1 | tail -18; }
on scorer && { python3 benchmarks/gather_attention_kernel.py --commit "$COMMIT" --out $OUT/gather_attention_kernel.json 2>&1 | tail -48; }
on launch && { python3 benchmarks/launch.py --commit "$COMMIT" --out $OUT/launch.json 2>&1 | tail -5; }
on attention && { grep -E "^(samsa|sdpa|proj|gps)" $LOGS/attention_cuda.log | tail -48; }
on layer && { grep -E "^(samsa|full)" $LOGS/layer.log | tail -30; }
on tests && { grep -E "^===|^FAILED|passed|failed|peak|Error" $LOGS/gpu_tests.log | tail -60; }
