"""The inference shortcuts of SamsaAttention compute what the general path
computes: the cached stacked projection (refreshed when a parameter changes)
and the unordered top-k of equal-size sets."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention


def reference(attn, x, batch, **kwargs):
    # The general path: gradients reach the parameters, so nothing cached.
    with torch.enable_grad():
        return attn(x, batch, **kwargs)


def equal_sets(B=3, n=20, C=32):
    return torch.randn(B * n, C), torch.arange(B).repeat_interleave(n)


@pytest.mark.parametrize('sampling', ['hard', 'sft'])
def test_cached_projection_equals_the_general_path(sampling):
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6, sampling=sampling).eval()
    x, batch = equal_sets()
    with torch.no_grad():
        out = attn(x, batch)
        again = attn(x, batch)  # served from the cache
    assert attn._projection_cache is not None
    torch.testing.assert_close(out, reference(attn, x, batch).detach())
    assert torch.equal(out, again)


def test_cached_projection_follows_parameter_changes():
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6).eval()
    x, batch = equal_sets()
    with torch.no_grad():
        before = attn(x, batch)
        attn.lin_q.weight.mul_(2.0)  # in place: a new version
        scaled = attn(x, batch)
    torch.testing.assert_close(scaled, reference(attn, x, batch).detach())
    assert not torch.allclose(scaled, before)

    other = SamsaAttention(32, heads=4, k=6).eval()
    attn.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(attn(x, batch), other(x, batch))
        attn.double()  # new tensors, new dtype
        out64 = attn(x.double(), batch)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), other(x, batch).detach(),
                               atol=1e-5, rtol=1e-5)
    attn.train()
    assert attn._projection_cache is None


def test_cached_projection_under_autocast():
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6).eval()
    x, batch = equal_sets()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with torch.no_grad():
            out = attn(x, batch)
            assert attn._projection_cache[1].dtype == torch.bfloat16
        ref = reference(attn, x, batch).detach()
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float())
    with torch.no_grad():  # autocast off: a float32 cache again
        attn(x, batch)
    assert attn._projection_cache[1].dtype == torch.float32


def test_unordered_top_k_selects_the_same_tokens():
    # Without return_indices the top-k of equal-size sets skips its sort:
    # the same tokens, the same output.
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6).eval()
    x, batch = equal_sets()
    with torch.no_grad():
        out, idx = attn(x, batch, return_indices=True)
        fast = attn(x, batch)
    torch.testing.assert_close(fast, out)
    score = attn.scorer(x).view(3, 20, 4)  # [B, n, H]
    best = score.topk(6, dim=1).indices + 20 * torch.arange(3).view(3, 1, 1)
    assert torch.equal(idx, best.transpose(1, 2))  # [B, H, k], descending


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_row_writing_gather_has_the_accumulating_gradients(monkeypatch,
                                                           sampling):
    # Equal-size sets gather their top and bottom rows with a backward that
    # writes instead of accumulating: the same gradients.
    import samsa_geo.nn.attention._sampling as sampling_mod
    import samsa_geo.nn.attention.samsa_attention as mod

    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6, sampling=sampling)
    x, batch = equal_sets()
    x.requires_grad_()
    w = torch.randn(x.size(0), 32)
    grads = []
    for unique in (True, False):
        if not unique:
            monkeypatch.setattr(
                mod, 'gather_rows',
                lambda kv, ids, head, unique: sampling_mod.gather_rows(
                    kv, ids, head, False))
        torch.manual_seed(1)  # the same Gumbel noise
        attn.zero_grad()
        x.grad = None
        (attn(x, batch) * w).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone()
                                         for p in attn.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
