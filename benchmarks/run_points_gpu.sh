#!/usr/bin/env bash
# Point-cloud GPU measurements in one go (results under $OUT or
# benchmarks/results): FlexAttention tile options of the fused
# relative-bias kernel (one process per option set), then the point
# benchmark eager under autocast, with bf16 parameters, and compiled, all
# with the fastest option set found.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 100 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider -p no:logging --tb=short -k fused > $OUT/gpu_tests.log 2>&1
grep -E "^E |passed|failed" $OUT/gpu_tests.log | head -8
rm -f $OUT/flex_options.jsonl
for o in '{}' \
         '{"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}' \
         '{"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}' \
         '{"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2}'; do
  timeout 75 python3 benchmarks/flex_options.py --options "$o" >> $OUT/flex_options.jsonl 2>/dev/null \
    || echo "{\"options\": $o, \"error\": \"process failed\"}" >> $OUT/flex_options.jsonl
done
cat $OUT/flex_options.jsonl | cut -c1-220
BEST=$(python3 -c "
import json
recs = [json.loads(l) for l in open('$OUT/flex_options.jsonl')]
ok = [r for r in recs if r.get('ms') and r.get('max_err', 0) < 0.05]
print(json.dumps(min(ok, key=lambda r: r['ms'])['options'] or {}) if ok else '{}')")
echo "best options: $BEST"
ONLY=samsa_point_classifier_small,samsa_point_classifier_small_ri,samsa_point_classifier_paper,samsa_conv_layer,samsa_conv_layer_relbias,point_transformer_conv_layer
timeout 200 python3 benchmarks/points.py --device cuda --weights bf16 --compile --only $ONLY --flex-options "$BEST" --out $OUT/points_cuda_bf16_weights_compiled.json > /tmp/p3.log 2>&1; tail -7 /tmp/p3.log
timeout 110 python3 benchmarks/points.py --device cuda --weights bf16 --flex-options "$BEST" --out $OUT/points_cuda_bf16_weights.json > /tmp/p2.log 2>&1; tail -12 /tmp/p2.log
timeout 110 python3 benchmarks/points.py --device cuda --flex-options "$BEST" --out $OUT/points_cuda.json > /tmp/p1.log 2>&1; tail -12 /tmp/p1.log
