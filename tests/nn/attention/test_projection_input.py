"""SamsaAttention casts its tokens for the projections first thing under
autocast (so that the GPU casts while the host picks the path): the
outputs and gradients equal those of the cast made where the projection
needs it."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention
from samsa_geo.ops import value_checks


def _run(attn, x, batch, train, **kwargs):
    x = x.detach().requires_grad_(train)
    torch.manual_seed(3)  # the same sampling noise in training
    with torch.autocast('cpu', dtype=torch.bfloat16), value_checks(False):
        out = attn(x, batch, num_graphs=2, **kwargs)
    if not train:
        return out, None, []
    out.float().square().sum().backward()
    grads = [p.grad.clone() for p in attn.parameters() if p.grad is not None]
    attn.zero_grad(set_to_none=True)
    return out, x.grad, grads


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('sizes,k', [([40, 40], 8),   # ranked sets
                                     ([10, 6], 16)])  # every token kept
def test_early_cast_equals_late_cast(monkeypatch, train, sizes, k):
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=k).train(train)
    x = torch.randn(sum(sizes), 32)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    made = []
    original = SamsaAttention._projection_input

    def spy(self, x):
        out = original(self, x)
        made.append(out)
        return out

    monkeypatch.setattr(SamsaAttention, '_projection_input', spy)
    early = _run(attn, x, batch, train, max_num_nodes=max(sizes))
    assert made[-1] is not None and made[-1].dtype == torch.bfloat16
    monkeypatch.setattr(SamsaAttention, '_projection_input',
                        lambda self, x: None)
    late = _run(attn, x, batch, train, max_num_nodes=max(sizes))
    assert early[0].dtype == late[0].dtype
    assert torch.equal(early[0], late[0])
    if train:
        assert torch.equal(early[1], late[1])
        assert len(early[2]) == len(late[2]) > 0
        for a, b in zip(early[2], late[2]):
            assert torch.equal(a, b)


def test_no_early_cast_without_autocast_or_in_float64():
    attn = SamsaAttention(16, heads=2, k=4)
    x = torch.randn(10, 16)
    assert attn._projection_input(x) is None  # no autocast
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert attn._projection_input(x.double()) is None
        assert attn._projection_input(x).dtype == torch.bfloat16
        assert attn.double()._projection_input(x) is None
