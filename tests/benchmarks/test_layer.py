import json
import os.path as osp
import subprocess
import sys

ROOT = osp.join(osp.dirname(__file__), '..', '..')


def test_run_settings_are_set_for_the_run_and_kept_in_the_flags(
        tmp_path):
    # layer.py --fused-max-set-size replaces the fused path's limit for its
    # run, --sampled-rows-min-tokens the sampled rows' projection's,
    # --linear-min-elements samsa_geo.ops.linear's,
    # --cuda-graph-max-elements the layer's CUDA graphs', --ops-backend what
    # samsa_geo.ops' 'auto' means; every record says so in its flags. (A
    # fresh interpreter: they are module globals.)
    out = tmp_path / 'layer.json'
    code = (
        'import runpy, sys\n'
        'sys.argv = ["layer.py", "--device", "cpu", "--sizes", "2x16", '
        '"--ops", "samsa_conv_batch", "--passes", "fwd", "--warmup", "1", '
        '"--repeat", "1", "--fused-max-set-size", "12", "--ops-backend", '
        '"torch", "--linear-min-elements", "77", '
        '"--sampled-rows-min-tokens", "5", "--cuda-graph-max-elements", '
        '"99", "--out", '
        f'{str(out)!r}]\n'
        'runpy.run_path("benchmarks/layer.py", run_name="__main__")\n'
        'from samsa_geo.nn.attention import samsa_attention\n'
        'print("limit", samsa_attention.FUSED_MAX_SET_SIZE)\n'
        'print("rows", samsa_attention.SAMPLED_ROWS_MIN_TOKENS)\n'
        'print("training rows", '
        'samsa_attention.TRAINING_SAMPLED_ROWS_MIN_TOKENS)\n'
        'from samsa_geo import ops\n'
        'print("backend", ops.default_backend())\n'
        'import importlib\n'
        'print("linear", importlib.import_module('
        '"samsa_geo.ops.linear").MIN_ELEMENTS)\n'
        'print("graphs", importlib.import_module('
        '"samsa_geo.nn.conv.samsa_conv").CUDA_GRAPH_MAX_ELEMENTS)\n')
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'limit 12' in run.stdout and 'backend torch' in run.stdout
    assert 'linear 77' in run.stdout and 'rows 5' in run.stdout
    assert 'training rows 5' in run.stdout and 'graphs 99' in run.stdout
    records = json.loads(out.read_text())
    assert records and all(r['flags']['fused_max_set_size'] == 12
                           and r['flags']['ops_backend'] == 'torch'
                           and r['flags']['linear_min_elements'] == 77
                           and r['flags']['sampled_rows_min_tokens'] == 5
                           and r['flags']['cuda_graph_max_elements'] == 99
                           for r in records)
    assert {r['op'] for r in records} == {'samsa_conv_batch'}


def test_sdpa_backends_restrict_the_runs_attention():
    # --sdpa-backends: PyTorch's SDPA may take the named backends alone,
    # in their order; an unknown name is refused; none leaves PyTorch's
    # choice.
    import pytest
    import torch
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    import layer
    backends = torch.backends.cuda
    before = (backends.flash_sdp_enabled(), backends.math_sdp_enabled(),
              backends.mem_efficient_sdp_enabled(),
              backends.cudnn_sdp_enabled())
    with layer.sdpa_backends('flash,math'):
        assert backends.flash_sdp_enabled() and backends.math_sdp_enabled()
        assert not backends.mem_efficient_sdp_enabled()
        assert not backends.cudnn_sdp_enabled()
    assert (backends.flash_sdp_enabled(), backends.math_sdp_enabled(),
            backends.mem_efficient_sdp_enabled(),
            backends.cudnn_sdp_enabled()) == before
    with layer.sdpa_backends(None):
        assert backends.mem_efficient_sdp_enabled() == before[2]
    with pytest.raises(ValueError, match="'--sdpa-backends'.*'fast'"):
        layer.sdpa_backends('flash,fast')


def test_inductor_config_sets_the_compilers_settings_for_the_run():
    # --inductor-config: torch._inductor.config settings for the run,
    # restored after it; a bad setting names the flag.
    import pytest
    import torch._inductor.config as inductor
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    import layer
    before = inductor.triton.coalesce_tiling_analysis
    with layer.inductor_config(
            f'triton.coalesce_tiling_analysis={not before}, '
            'max_autotune_gemm_backends="TRITON"'):
        assert inductor.triton.coalesce_tiling_analysis is (not before)
        assert inductor.max_autotune_gemm_backends == 'TRITON'
    assert inductor.triton.coalesce_tiling_analysis is before
    with layer.inductor_config(None):
        assert inductor.triton.coalesce_tiling_analysis is before
    for bad in ('triton.nope=1', 'max_autotune', 'max_autotune=yes'):
        with pytest.raises(ValueError, match="'--inductor-config'"):
            with layer.inductor_config(bad):
                pass
