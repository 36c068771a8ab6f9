import pytest
import torch
import torch.nn.functional as F
from torch.nn import BatchNorm1d

from samsa_geo.ops.masked_batch_norm import (
    batch_norm_counted,
    counted_rows,
    counted_rows_mask,
    masked_batch_norm,
)


def _padded(n=40, pad=9, C=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, generator=g, dtype=dtype) * 3 + 2
    junk = torch.randn(pad, C, generator=g, dtype=dtype) * 100
    keep = torch.cat([torch.ones(n), torch.zeros(pad)]).bool()
    perm = torch.randperm(n + pad, generator=g)  # padding anywhere
    return x, torch.cat([x, junk])[perm], keep[perm], perm


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('affine', [True, False])
def test_equals_batch_norm_of_the_kept_rows(momentum, affine):
    x, xp, keep, perm = _padded()
    ref = BatchNorm1d(6, momentum=momentum, affine=affine).double()
    bn = BatchNorm1d(6, momentum=momentum, affine=affine).double()
    if affine:
        with torch.no_grad():
            for m in (ref, bn):
                m.weight.copy_(torch.linspace(0.5, 2, 6))
                m.bias.copy_(torch.linspace(-1, 1, 6))
    x.requires_grad_()
    xp = xp.detach().requires_grad_()
    for step in range(3):  # running statistics over several batches
        want = ref(x)
        got = batch_norm_counted(bn, xp, keep.view(-1, 1).double())
        kept = got[keep]
        # the kept rows in their order: perm maps padded -> source rows
        order = perm[keep].argsort()
        torch.testing.assert_close(kept[order], want)
        assert (got[~keep] == 0).all()
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    w = torch.randn(want.shape, dtype=torch.float64)
    (want * w).sum().backward()
    wp = torch.zeros(got.shape, dtype=torch.float64)
    wp[keep] = w[perm[keep]]
    wp[~keep] = 5.0  # the padding's outputs reach nothing that counts
    (got * wp).sum().backward()
    torch.testing.assert_close(xp.grad[keep][order], x.grad)
    assert (xp.grad[~keep] == 0).all()
    if affine:  # the last step's gradients
        torch.testing.assert_close(bn.weight.grad, ref.weight.grad)
        torch.testing.assert_close(bn.bias.grad, ref.bias.grad)


def test_low_precision_rows_keep_float32_statistics():
    x, xp, keep, _ = _padded(dtype=torch.float32)
    got = masked_batch_norm(xp.bfloat16(), keep.view(-1, 1).float())
    assert got.dtype == torch.bfloat16
    want = F.batch_norm(x.bfloat16().float(), None, None, training=True)
    kept = got[keep].float()
    assert torch.allclose(kept.sort(0).values, want.sort(0).values,
                          atol=3e-2)


def test_counted_rows_sets_the_mask_for_its_block_only():
    assert counted_rows_mask() is None
    with counted_rows(torch.tensor([True, False, True])) as mask:
        assert counted_rows_mask() is mask
        assert mask.shape == (3, 1) and mask.dtype == torch.float32
        assert mask.view(-1).tolist() == [1.0, 0.0, 1.0]
    assert counted_rows_mask() is None


@pytest.mark.parametrize('mask', [torch.ones(3), torch.ones(3, 1).bool(),
                                  [True, False]])
def test_counted_rows_names_a_bad_mask(mask):
    with pytest.raises(ValueError, match="'mask' to be a bool tensor"):
        with counted_rows(mask):
            pass
    assert counted_rows_mask() is None


def test_masked_batch_norm_names_bad_shapes():
    with pytest.raises(ValueError, match=r"'mask' of shape \[N, 1\]"):
        masked_batch_norm(torch.randn(4, 3), torch.ones(4))
