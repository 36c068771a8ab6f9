import subprocess
import sys

import pytest
import torch

from samsa_geo.visualization import SamplingRecorder, record_sampling


def _attn_names(model, attn_cls):
    return [n for n, m in model.named_modules() if isinstance(m, attn_cls)]


def test_one_entry_per_layer(point_model, point_batch, attn_cls):
    with SamplingRecorder(point_model) as rec:
        point_model(point_batch.pos, point_batch.batch)
    names = _attn_names(point_model, attn_cls)
    assert names == ['attns.0', 'attns.1', 'conv.attn']
    assert list(rec.indices) == names == rec.module_names
    for name, heads in zip(names, (2, 3, 1)):
        idx = rec.indices[name]
        assert idx.dtype == torch.long and idx.device.type == 'cpu'
        assert not idx.requires_grad
        assert idx.shape[:2] == (2, heads)
        assert len(rec.records[name]) == 1
        record = rec.records[name][0]
        assert record.num_tokens == point_batch.num_nodes
        assert torch.equal(record.pos, point_batch.pos)
        assert torch.equal(record.batch, point_batch.batch)
    assert 'attns.0' in repr(rec)


def test_indices_equal_direct_call(point_model, point_batch):
    pos, batch = point_batch.pos, point_batch.batch
    with record_sampling(point_model) as rec:
        point_model(pos, batch)
    # Replay the first layer by hand: same input, asked for indices directly.
    h = point_model.lin_in(pos)
    _, expected = point_model.attns[0](h, batch, pos=pos, return_indices=True)
    assert torch.equal(rec.indices['attns.0'], expected)
    # Graph g only samples its own points.
    idx = rec.indices['attns.0']
    for g in range(2):
        sel = idx[g][idx[g] >= 0]
        assert (batch[sel] == g).all()


@pytest.mark.parametrize('training', [False, True])
def test_output_unchanged(point_model, point_batch, training):
    point_model.train(training)
    torch.manual_seed(0)
    ref = point_model(point_batch.pos, point_batch.batch)
    torch.manual_seed(0)
    with SamplingRecorder(point_model):
        out = point_model(point_batch.pos, point_batch.batch)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, ref)


def test_hooks_removed(point_model, point_batch, attn_cls):
    modules = [m for m in point_model.modules() if isinstance(m, attn_cls)]
    with SamplingRecorder(point_model):
        assert all(len(m._forward_hooks) == 1 for m in modules)
        assert all(len(m._forward_pre_hooks) == 1 for m in modules)
    assert all(len(m._forward_hooks) == 0 for m in modules)
    assert all(len(m._forward_pre_hooks) == 0 for m in modules)
    # Also when the forward pass raises.
    with pytest.raises(RuntimeError):
        with SamplingRecorder(point_model):
            point_model(torch.randn(5, 4))  # wrong width
    assert all(len(m._forward_hooks) == 0 for m in modules)
    assert all(len(m._forward_pre_hooks) == 0 for m in modules)
    # Outside the context the layers return plain tensors, unrecorded.
    rec = SamplingRecorder(point_model)
    point_model(point_batch.pos, point_batch.batch)
    assert rec.records == {}


def test_caller_asking_for_indices_and_repeated_calls(attn_cls):
    attn = attn_cls(8, heads=2, k=3)
    model = torch.nn.Sequential(attn)
    x = torch.randn(10, 8)
    with SamplingRecorder(model) as rec:
        out, idx = attn(x, return_indices=True)
        out2 = attn(x * 2)
    assert isinstance(out2, torch.Tensor)
    assert len(rec.records['0']) == 2
    assert torch.equal(rec.records['0'][0].indices, idx)
    assert rec.records['0'][0].batch is None
    assert torch.equal(rec.indices['0'], rec.records['0'][1].indices)
    rec.clear()
    assert rec.indices == {}


def test_bad_input():
    with pytest.raises(TypeError, match="'model'"):
        SamplingRecorder(object())
    with pytest.raises(ValueError, match='SamsaAttention'):
        with SamplingRecorder(torch.nn.Linear(2, 2)):
            pass


def test_import_does_not_pull_nn():
    code = ('import sys, samsa_geo.visualization; '
            'print("samsa_geo.nn" in sys.modules, "open3d" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ['False', 'False']
