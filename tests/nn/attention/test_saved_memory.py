"""What a training forward of SamsaAttention keeps for its backward: the
stacked projection (queries, keys and values, the scorer's hidden rows)
is not kept alive as a whole, and the importance scorer saves no float32
activation of its own."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention


def _saved_storages(fn):
    sizes = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes


@pytest.mark.parametrize('sizes', [[256] * 4, [300, 40, 172]])
@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_training_forward_keeps_no_stacked_projection(sizes, sampling):
    torch.manual_seed(0)
    C, N = 32, sum(sizes)
    attn = SamsaAttention(C, heads=4, k=16, sampling=sampling).train()
    x = torch.randn(N, C, requires_grad=True)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    out, saved = _saved_storages(lambda: attn(x, batch))
    # The projection's output is [N, 4C] (queries C, keys and values 2C,
    # the scorer's hidden rows C); nothing saved may be that large.
    projection = N * 4 * C * x.element_size()
    assert max(saved.values()) < projection
    if len(set(sizes)) == 1:  # no padded query tiles
        # Per token: the tokens, the queries, the attention output before
        # lin_out, the attention's row statistics and bounded per-set rows:
        # less than the projection's 4 rows of C alone.
        per_token = sum(saved.values()) / N
        assert per_token < 4 * C * x.element_size()
    out.square().sum().backward()  # the backward runs from what is saved
    assert x.grad is not None and torch.isfinite(x.grad).all()
