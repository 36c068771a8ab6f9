"""The relaxation of the boundary at rank k (``relax``): its fused autograd
Function against the formula in plain autograd, the gradient cap, hard and
soft mode, and what it keeps for the backward pass."""
import importlib
import math
import os

import pytest
import torch

from samsa_geo.nn.attention import _relax
from samsa_geo.nn.attention._relax import relax
from samsa_geo.nn.attention._sampling import gumbel_like, select
from samsa_geo.nn.attention._sets import set_info


def batch_of(sizes):
    return torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])


def relax_reference(sel, kv, head, tau, hard, grad_cap=0.25):
    r"""``relax`` as its docstring states it, in plain autograd: the pair
    tensor :math:`p_{ij}` explicitly, unused slots in no pair, the cap as a
    rescaled derivative of :math:`p` (its value unchanged)."""
    u = kv[sel.ids, head]  # [B, H, k + m, F]
    k = sel.k
    u_top, u_bottom = u[:, :, :k], u[:, :, k:]
    B, m = u.size(0), u.size(2) - k
    top_valid = sel.top_valid if sel.top_valid is not None else \
        torch.ones(B, k, dtype=torch.bool)
    bottom_valid = sel.bottom_valid if sel.bottom_valid is not None else \
        torch.ones(B, m, dtype=torch.bool)
    pair = (top_valid.view(B, 1, k, 1)
            & bottom_valid.view(B, 1, 1, m)).float()  # [B, 1, k, m]
    score = sel.cand[sel.ids, head]  # [B, H, k + m]
    assert torch.equal(score, sel.score)
    s_top, s_bottom = score[..., :k], score[..., k:]
    p = torch.sigmoid((s_top.unsqueeze(-1) - s_bottom.unsqueeze(-2)) / tau)
    peak = (p * (1.0 - p) / tau * pair).amax(dim=(-2, -1), keepdim=True)
    scale = (grad_cap / peak.clamp(min=1e-12)).clamp(max=1.0).detach()
    p = (p.detach() + scale * (p - p.detach())) * pair
    bvalid = bottom_valid.view(B, 1, 1, m).float()
    num = bvalid.sum(-1, keepdim=True)  # [B, 1, 1, 1]
    keep = p.sum(-1, keepdim=True) / num.clamp(min=1) + (num == 0).float()
    mix = (1.0 - p) * bvalid / num.clamp(min=1)  # [B, H, k, m]
    if not hard:
        return keep * u_top + mix @ u_bottom
    soft = keep * u_top.detach() + mix @ u_bottom.detach()
    return u_top + (soft - soft.detach())


LAYOUTS = {
    # name: (sizes, k, registers, packed)
    'equal': ([40, 40, 40], 6, 0, False),
    'equal_sorted': ([40, 40], 6, 0, True),
    'equal_large': ([70, 70], 20, 0, False),  # several kernel blocks
    'one_set': (None, 7, 0, False),
    'ragged': ([30, 12, 3], 6, 0, False),
    'ragged_registers': ([30, 2, 12], 6, 2, False),
    'ragged_sorted': ([30, 12, 3], 6, 0, True),
    # a fraction of each set: unused top slots next to used bottom slots
    'fraction': ([40, 12, 9], 0.25, 0, False),
}


def run(fn, layout, hard, tau, grad_cap=0.25, seed=0):
    sizes, k, R, packed = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    batch = None if sizes is None else batch_of(sizes)
    N = 50 if sizes is None else batch.numel()
    H, F = 3, 5
    score = torch.randn(N, H, generator=g).requires_grad_()
    reg = torch.randn(R, H, generator=g).requires_grad_() if R else None
    kv = torch.randn(N + 3 * R, H, F, generator=g).requires_grad_()
    info = set_info(N, batch, k, R, False, kv.device)
    torch.manual_seed(seed)
    sel = select(score, reg, batch, info, R, True, True, packed=packed)
    head = torch.arange(H).view(1, -1, 1)
    out = fn(sel, kv, head, tau, hard, grad_cap)
    w = torch.randn(out.shape, generator=g)
    if sel.top_valid is not None:  # the attention never reads unused slots
        w = w * sel.top_valid.view(-1, 1, sel.k, 1)
    leaves = [score, kv] + ([reg] if R else [])
    grads = torch.autograd.grad((out * w).sum(), leaves)
    return out, grads, sel


@pytest.mark.parametrize('layout', list(LAYOUTS))
@pytest.mark.parametrize('hard', [True, False])
@pytest.mark.parametrize('tau', [1.0, 0.2])  # cap inactive / active
def test_relax_matches_reference(layout, hard, tau):
    out, grads, sel = run(relax, layout, hard, tau)
    ref, ref_grads, _ = run(relax_reference, layout, hard, tau)
    assert sel.ids.size(-1) > sel.k  # a bottom set exists
    valid = torch.ones(out.shape[:3], dtype=torch.bool)
    if sel.top_valid is not None:
        valid = sel.top_valid.unsqueeze(1).expand_as(valid)
    assert torch.allclose(out[valid], ref[valid], atol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads[0].abs().sum() > 0  # the scores learn


@pytest.mark.parametrize('layout', ['equal', 'fraction'])
def test_cap_binds_only_below_its_threshold(layout):
    # With tau = 1 the sigmoid derivative never exceeds 1/4: the cap of
    # 1/4 changes nothing; a cap of 1/20 scales the score gradient down.
    _, grads, _ = run(relax, layout, True, 1.0, grad_cap=1e9)
    _, capped, _ = run(relax, layout, True, 1.0, grad_cap=0.25)
    assert torch.allclose(grads[0], capped[0], atol=1e-7)
    _, tight, _ = run(relax, layout, True, 1.0, grad_cap=0.05)
    _, tight_ref, _ = run(relax_reference, layout, True, 1.0, grad_cap=0.05)
    assert torch.allclose(tight[0], tight_ref[0], atol=1e-7)
    assert tight[0].abs().sum() < 0.5 * grads[0].abs().sum()


def test_hard_forward_is_exact_and_soft_is_convex():
    batch = batch_of([30, 12, 3])
    torch.manual_seed(0)
    score = torch.randn(batch.numel(), 3, requires_grad=True)
    info = set_info(batch.numel(), batch, 6, 0, False, batch.device)
    sel = select(score, None, batch, info, 0, True, True)
    kv = torch.randn(batch.numel(), 3, 5, requires_grad=True)
    head = torch.arange(3).view(1, -1, 1)
    hard = relax(sel, kv, head, 1.0, True)
    assert torch.equal(hard, kv[sel.top, head])
    # Unused slots (the set of 3 has 3 of 6) are never read downstream.
    (hard * sel.top_valid.view(-1, 1, 6, 1)).sum().backward()
    assert score.grad.abs().sum() > 0  # scores learn through the relaxation
    # Top rows get the full upstream gradient, every other row none.
    top = torch.zeros(kv.shape[:2], dtype=torch.bool)
    top[sel.top, head] = True
    assert torch.equal(kv.grad[top], torch.ones(int(top.sum()), 5))
    assert (kv.grad[~top] == 0).all()
    # Soft: constant rows stay constant (weights sum to one).
    soft = relax(sel, torch.ones_like(kv), head, 0.1, False)
    assert torch.allclose(soft, torch.ones_like(soft), atol=1e-6)


def test_gradient_cap():
    batch = torch.zeros(40, dtype=torch.long)
    score = torch.zeros(40, 1, requires_grad=True)
    info = set_info(40, batch, 4, 0, False, batch.device)
    sel = select(score, None, batch, info, 0, False, True)
    kv = torch.zeros(40, 1, 1)
    kv[sel.top.view(-1)] = 1.0  # top rows 1, bottom rows 0
    head = torch.zeros(1, 1, 1, dtype=torch.long)
    z = relax(sel, kv, head, tau=0.01, hard=False)
    z.sum().backward()
    # d z / d s_top: uncapped 1/(4 tau) = 25 per unit; capped at 0.25.
    assert score.grad[sel.top.view(-1)].allclose(torch.tensor(0.25))
    assert score.grad[sel.bottom.view(-1)].allclose(torch.tensor(-0.25))


@pytest.mark.parametrize('hard', [True, False])
def test_no_pair_tensor_is_kept(hard):
    # Memory: the backward pass recomputes the [B, H, k, m] pair weights.
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(relax, 'equal', hard, 0.2)
    k = LAYOUTS['equal'][1]
    assert saved and max(saved) < 3 * 3 * k * k * 5  # no [B, H, k, m] term
    assert 3 * 3 * k * k not in saved


def test_bfloat16_rows_follow_float32():
    # Under autocast the rows are bfloat16 and the scores float32.
    out, grads, sel = run(relax, 'ragged', False, 0.2)
    score_grad = grads[0]
    _, _, H, F = 0, 0, 3, 5
    sizes, k, _, _ = LAYOUTS['ragged']
    g = torch.Generator().manual_seed(0)
    N = sum(sizes)
    score = torch.randn(N, H, generator=g).requires_grad_()
    kv = torch.randn(N, H, F, generator=g).bfloat16().requires_grad_()
    info = set_info(N, batch_of(sizes), k, 0, False, kv.device)
    torch.manual_seed(0)
    sel = select(score, None, batch_of(sizes), info, 0, True, True)
    head = torch.arange(H).view(1, -1, 1)
    z = relax(sel, kv, head, 0.2, False)
    assert z.dtype == torch.bfloat16
    w = torch.randn(z.shape, generator=g) * sel.top_valid.view(-1, 1, k, 1)
    gs, gkv = torch.autograd.grad((z.float() * w).sum(), (score, kv))
    assert gs.dtype == torch.float32 and gkv.dtype == torch.bfloat16
    assert torch.allclose(gs, score_grad, atol=2e-2)
    assert torch.allclose(z.float(), out, atol=3e-2)


def test_gumbel_noise_moments():
    torch.manual_seed(0)
    g = gumbel_like(torch.empty(200_000))
    assert abs(g.mean().item() - 0.5772) < 0.01  # Euler's constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03


@pytest.fixture(scope='module')
def kernel():
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':  # set by conftest.py
        pytest.skip('Triton interpreter not enabled (a GPU is present)')
    return importlib.import_module('samsa_geo.nn.attention._relax_triton')


@pytest.mark.parametrize('layout', ['equal', 'equal_large', 'one_set',
                                    'ragged_registers', 'fraction'])
@pytest.mark.parametrize('tau', [1.0, 0.2])
def test_triton_score_gradient_matches_pytorch(kernel, layout, tau):
    sizes, k, R, packed = LAYOUTS[layout]
    g = torch.Generator().manual_seed(2)
    batch = None if sizes is None else batch_of(sizes)
    N = 50 if sizes is None else batch.numel()
    H, F = 3, 20  # F below a power of two: masked feature columns
    score = torch.randn(N, H, generator=g)
    reg = torch.randn(R, H, generator=g) if R else None
    info = set_info(N, batch, k, R, False, score.device)
    torch.manual_seed(0)
    sel = select(score, reg, batch, info, R, True, True, packed=packed)
    M = N + info.num_sets * R
    head = torch.arange(H).view(1, -1, 1)
    u = torch.randn(M, H, F, generator=g)[sel.ids, head]
    grad = torch.randn(*sel.ids.shape[:2], sel.k, F, generator=g)
    masks = None if sel.top_valid is None else _relax._Masks(sel)
    x = sel.score / tau
    c = _relax._score_factor(x, sel.k, tau, 0.25, masks)
    ds = _relax._score_grad(_relax._pair_probability(x, sel.k, masks),
                            grad, u, c)
    ref = torch.zeros(M, H).index_put_((sel.ids, head), ds, accumulate=True)
    a, b = _relax._masked_scores(x, sel.k, masks)
    out = kernel.relax_score_grad_triton(grad, u, a, b, c, sel.ids, M,
                                         unique=info.all_valid)
    assert out.abs().sum() > 0
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('layout', ['equal_large', 'ragged'])
@pytest.mark.parametrize('hard', [True, False])
def test_relax_through_the_triton_kernel_matches_reference(
        kernel, monkeypatch, layout, hard):
    monkeypatch.setattr(_relax, '_fused_score_grad', lambda u, score: True)
    out, grads, _ = run(relax, layout, hard, 0.2)
    ref, ref_grads, _ = run(relax_reference, layout, hard, 0.2)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_deterministic_algorithms_keep_the_pytorch_score_gradient(
        monkeypatch):
    # The kernel sums the bottom scores' gradients atomically (in varying
    # order on a GPU): deterministic mode takes PyTorch's formula.
    monkeypatch.setattr(_relax, 'triton_serves', lambda device: True)
    u, score = torch.randn(2, 3, 8, 4), torch.randn(2, 3, 8)
    assert _relax._fused_score_grad(u, score)
    # Nor do a float64 layer's float64 scores take the float32 kernel.
    assert not _relax._fused_score_grad(u.double(), score.double())
    torch.use_deterministic_algorithms(True)  # restored by conftest.py
    assert not _relax._fused_score_grad(u, score)
    # ... and computes the same gradients as the reference.
    out, grads, _ = run(relax, 'equal_large', False, 0.2)
    ref, ref_grads, _ = run(relax_reference, 'equal_large', False, 0.2)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)
