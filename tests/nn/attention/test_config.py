import pytest

from samsa_geo.nn.attention import config

# A value other than the default, per switch.
OTHER = {'debug': True, 'fused_bias': False, 'fused_scorer': False,
         'fused_inference': False, 'sampled_rows': False,
         'fused_relax': False,
         'tile_attention': True, 'packed_attention': True,
         'fused_gine': True,
         'stacked_casts': True, 'cuda_graphs': False,
         'bias_inference_kernel': 'flex',
         'flex_kernel_options': {'BLOCK_M': 64}}


def test_every_switch_has_another_value_here():
    assert set(OTHER) == set(config._SETTERS)


@pytest.mark.parametrize('name', sorted(OTHER))
def test_snapshot_changes_with_every_switch(name):
    # A captured graph is keyed by the snapshot: a switch it missed would
    # replay kernels chosen under the old value.
    before = config.snapshot()
    hash(before)
    with config.attention_config(**{name: OTHER[name]}):
        assert config._SETTERS[name][0]() == OTHER[name]
        assert config.snapshot() != before
    assert config.snapshot() == before


def test_snapshot_sees_flex_options_changed_in_place():
    with config.attention_config(flex_kernel_options={'BLOCK_M': 64}):
        before = config.snapshot()
        config.flex_kernel_options()['BLOCK_M'] = 32
        assert config.snapshot() != before


@pytest.mark.parametrize('debug', [False, True])
def test_no_value_checks_while_tracing(debug):
    # Traced calls read nothing back: compile, export and TorchScript traces
    # (ONNX export) see checks_values False, eager calls on the CPU True.
    import torch

    def fn(x):
        return x + float(config.checks_values(x.device))

    x = torch.zeros(2)
    with config.attention_config(debug=debug):
        assert config.checks_values(x.device) is True
        assert config.checks_values('cuda') is debug
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend='eager', fullgraph=True)
        assert torch.equal(compiled(x), x)
        traced = torch.jit.trace(fn, (x, ), check_trace=False)
        assert torch.equal(traced(x), x)

        class Model(torch.nn.Module):
            def forward(self, x):
                return fn(x)

        program = torch.export.export(Model(), (x, ))
        assert torch.equal(program.module()(x), x)
    assert torch.equal(fn(x), x + 1)
