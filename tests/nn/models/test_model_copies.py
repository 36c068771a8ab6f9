"""Copies of the models after inference calls (copy.deepcopy, a whole
module through torch.save): equal outputs, and no value shared with the
original (the layers keep values between inference calls)."""
import contextlib
import copy
import io

import pytest
import torch

from samsa_geo.nn.models import (
    SamsaGraphModel,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)


def _model_and_call(name):
    torch.manual_seed(0)
    pos, x = torch.randn(30, 3), torch.randn(30, 8)
    batch = torch.tensor([0] * 12 + [1] * 18)
    small = dict(channels=16, num_layers=2, heads=2, k=8, num_neighbors=4)
    if name == 'graph':
        model = SamsaGraphModel(8, 16, 3, 2, heads=2, k=4)
        edge_index = torch.stack([torch.arange(29), torch.arange(1, 30)])
        return model, lambda m: m(x, edge_index, batch=batch)
    if name == 'classifier':
        model = SamsaPointClassifier(5, **small)
        return model, lambda m: m(pos, batch)
    model = SamsaPointSegmenter(5, 3, **small)
    category = torch.tensor([0, 2])
    return model, lambda m: m(pos, batch, category=category)


def _torch_save_load(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('clone', [copy.deepcopy, _torch_save_load],
                         ids=['deepcopy', 'torch_save'])
@pytest.mark.parametrize('name', ['graph', 'classifier', 'segmenter'])
def test_copies_after_inference_calls_are_independent(name, clone,
                                                      autocast):
    model, call = _model_and_call(name)
    model.eval()
    context = torch.autocast('cpu', dtype=torch.bfloat16) if autocast \
        else contextlib.nullcontext()
    with torch.no_grad(), context:
        call(model)
        out = call(model)
    twin = clone(model)
    with torch.no_grad(), context:
        assert torch.equal(call(twin), out)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    with torch.no_grad(), context:
        changed = call(twin)
        assert torch.equal(call(model), out)
    assert not torch.equal(changed, out)
    ref = _model_and_call(name)[0].eval()
    ref.load_state_dict(twin.state_dict())
    with torch.no_grad(), context:
        assert torch.equal(call(ref), changed)
