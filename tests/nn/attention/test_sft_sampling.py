import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.attention._sft_sampling import sft_sample


def sets(sizes=(10, 3, 7), channels=5):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), channels)
    score = torch.randn(batch.numel())
    return x, score, batch


def test_sft_sample_eval_is_top_k():
    x, score, batch = sets()
    out = sft_sample(x, score, batch, k=4, mix=False, perturb=False)
    assert out.x.shape == (3, 4, 5) and out.index.shape == (3, 4)
    ptr = [0, 10, 13, 20]
    for b in range(3):
        n = ptr[b + 1] - ptr[b]
        k = min(4, n)
        expected = score[ptr[b]:ptr[b + 1]].topk(k).indices + ptr[b]
        assert torch.equal(out.index[b, :k], expected)
        assert torch.equal(out.x[b, :k], x[expected])
        assert (out.index[b, k:] == -1).all()
        assert (out.x[b, k:] == 0).all()
    assert torch.equal(out.valid, torch.tensor(
        [[True] * 4, [True] * 3 + [False], [True] * 4]))
    assert (out.partner == -1).all() and (out.weight == 1).all()


def test_sft_sample_pair_mixing():
    x, score, batch = sets()
    gen = torch.Generator().manual_seed(3)
    out = sft_sample(x, score, batch, k=4, generator=gen)
    ptr = [0, 10, 13, 20]
    for b in range(3):
        n = ptr[b + 1] - ptr[b]
        for s in range(min(4, n)):
            i, j = int(out.index[b, s]), int(out.partner[b, s])
            if n <= 4:  # no lower-ranked token: unmixed
                assert j == -1 and torch.equal(out.x[b, s], x[i])
                continue
            # j is a token of the same set outside the top set.
            assert ptr[b] <= j < ptr[b + 1]
            assert j not in out.index[b].tolist()
            w = F.softplus(score[i]) / (F.softplus(score[i])
                                        + F.softplus(score[j]))
            assert torch.allclose(out.weight[b, s], w)
            assert torch.allclose(out.x[b, s], w * x[i] + (1 - w) * x[j])


def test_sft_sample_gradients():
    x, score, batch = sets()
    x.requires_grad_()
    score.requires_grad_()
    out = sft_sample(x, score, batch, k=4)
    (out.x * torch.randn_like(out.x)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(score.grad).all()
    mixed = out.partner[out.partner >= 0]
    top = out.index[out.partner >= 0]
    # Scores of mixed pairs receive a gradient, others none.
    assert (score.grad[top] != 0).all() and (score.grad[mixed] != 0).all()
    touched = torch.zeros_like(score, dtype=torch.bool)
    touched[top] = touched[mixed] = True
    assert (score.grad[~touched] == 0).all()


def test_sft_sample_gradient_matches_finite_differences():
    x, score, _ = sets(sizes=(6, ), channels=2)
    x, score = x.double(), score.double().requires_grad_()
    gen = torch.Generator().manual_seed(0)

    def fn(s):
        gen.manual_seed(0)
        return sft_sample(x, s, None, k=2, generator=gen).x

    torch.autograd.gradcheck(fn, (score, ))


def test_sft_sample_k_at_least_n_returns_every_token():
    x, score, batch = sets(sizes=(4, 2))
    out = sft_sample(x, score, batch, k=8)
    for b, (lo, hi) in enumerate([(0, 4), (4, 6)]):
        n = hi - lo
        assert sorted(out.index[b, :n].tolist()) == list(range(lo, hi))
        assert torch.equal(out.x[b, :n], x[out.index[b, :n]])
    assert (out.partner == -1).all()


def test_sft_sample_batch_isolation():
    x, score, batch = sets()
    packed = sft_sample(x, score, batch, k=0.5, mix=False, perturb=False)
    ptr = [0, 10, 13, 20]
    for b in range(3):
        alone = sft_sample(x[ptr[b]:ptr[b + 1]], score[ptr[b]:ptr[b + 1]],
                           None, k=0.5, mix=False, perturb=False)
        k = alone.x.size(1)
        assert torch.equal(packed.x[b, :k], alone.x[0])
        assert torch.equal(packed.index[b, :k], alone.index[0] + ptr[b])


def test_sft_sample_errors():
    x, score, batch = sets()
    with pytest.raises(ValueError, match="'score' to have shape"):
        sft_sample(x, score[:-1], batch)
    with pytest.raises(ValueError, match="'x' to have shape"):
        sft_sample(x[0], score, batch)
    with pytest.raises(ValueError, match="'batch' to have shape"):
        sft_sample(x, score, batch[:-1])
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match="'k' to be"):
            sft_sample(x, score, batch, k=k)
