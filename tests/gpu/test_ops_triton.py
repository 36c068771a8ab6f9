"""samsa_geo's Triton kernels of kNN and FPS at full size on CUDA, run on
the GPU machine with ``pytest -m gpu tests/gpu``."""
import warnings

import pytest
import torch

from samsa_geo.nn.models import SamsaPointClassifier
from samsa_geo.ops import (
    fps,
    knn,
    knn_graph,
    knn_neighbours,
    use_backend,
    value_checks,
)
from samsa_geo.ops._fallback import blocks as distance_blocks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _assert_brute_force(out, x, y, k, batch_x=None, batch_y=None,
                        chunk=2048):
    # Against the fallback's float32 distances to every candidate of the
    # example: equal distances everywhere, equal indices except among
    # candidates at exactly equal distance (those come in index order).
    M = y.size(0)
    nbr = out[1].view(M, k)
    assert torch.equal(out[0], torch.arange(M, device=y.device)
                       .repeat_interleave(k))
    for q0 in range(0, M, chunk):
        yq = y[q0:q0 + chunk]
        dist = distance_blocks.distances(yq.t(), x.t(), False)  # [Q, N]
        if batch_x is not None:
            other = batch_y[q0:q0 + chunk, None] != batch_x[None, :]
            dist.masked_fill_(other, float('inf'))
        vals, idx = dist.topk(k, dim=1, largest=False, sorted=True)
        got = dist.gather(1, nbr[q0:q0 + chunk])
        assert torch.equal(got, vals)
        tied = torch.zeros_like(vals, dtype=torch.bool)
        same = vals[:, 1:] == vals[:, :-1]
        tied[:, 1:] |= same
        tied[:, :-1] |= same
        tied |= vals == vals[:, -1:]  # ties across the k-th place
        assert torch.equal(nbr[q0:q0 + chunk][~tied], idx[~tied])
        nb = nbr[q0:q0 + chunk]
        order_ok = (got[:, 1:] > got[:, :-1]) | (nb[:, 1:] > nb[:, :-1])
        assert bool(order_ok.all())


def test_knn_triton_128_clouds():
    clouds, n, k = 128, 1024, 16
    pos = torch.randn(clouds * n, 3, device='cuda')
    batch = torch.arange(clouds, device='cuda').repeat_interleave(n)
    out = knn(pos, pos, k, batch, batch, backend='triton')
    _assert_brute_force(out, pos, pos, k, batch, batch)
    graph = knn_graph(pos, k, batch, loop=True, backend='triton')
    assert torch.equal(graph, out.flip(0))


@pytest.mark.parametrize('order', ['random', 'coherent', 'lattice',
                                   'jittered'])
def test_knn_dense_kernel_equals_brute_force_and_tiled(order, monkeypatch):
    # The dense kernel of batches of small clouds: points in random order,
    # in a spatially coherent order (sorted along x: its groups of strided
    # candidates still spread over the cloud), on a lattice (exact ties
    # everywhere) and on a lattice moved by about 1e-6 (distances that
    # differ in their last bits only: the kernel's coarse keys tie, its
    # exact ranking decides). The tiled kernel agrees exactly.
    from samsa_geo.ops._triton import knn as knn_module
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE', 4096)
    clouds, n, k = 128, 1024, 16
    pos = torch.rand(clouds, n, 3, device='cuda')
    if order == 'coherent':
        pos = pos.gather(1, pos[..., :1].argsort(1).expand(-1, -1, 3))
    if order in ('lattice', 'jittered'):
        pos = (pos * 4).round() / 4
    if order == 'jittered':
        pos = pos + 1e-6 * torch.randn_like(pos)
    pos = pos.reshape(-1, 3)  # [clouds * n, 3]
    batch = torch.arange(clouds, device='cuda').repeat_interleave(n)
    out = knn(pos, pos, k, batch, batch, batch_size=clouds, backend='triton')
    _assert_brute_force(out, pos, pos, k, batch, batch)
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE', 0)
    assert torch.equal(out, knn(pos, pos, k, batch, batch, backend='triton'))


def test_knn_neighbours_never_syncs_and_knn_once(monkeypatch):
    # With batch_size given and value checks off, the table needs no read;
    # knn reads once (the empty slots), with value checks too (the dense
    # kernel's checks are read after it).
    from samsa_geo.ops._triton import knn as knn_module
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE', 4096)
    pos = torch.randn(64 * 1024, 3, device='cuda')
    batch = torch.arange(64, device='cuda').repeat_interleave(1024)
    table = knn_neighbours(pos, pos, 16, batch, batch, 64, backend='triton')
    syncs = _count_syncs(lambda: knn_neighbours(pos, pos, 16, batch, batch,
                                                64, backend='triton'))
    assert syncs == []
    edges = knn(pos, pos, 16, batch, batch, batch_size=64, backend='triton')
    assert torch.equal(edges[1].view(-1, 16), table)
    with value_checks(True):
        syncs = _count_syncs(lambda: knn(pos, pos, 16, batch, batch,
                                         batch_size=64, backend='triton'),
                             checks=True)
    assert len(syncs) == 1, syncs


@pytest.mark.parametrize('cloud', ['uniform', 'clustered'])
def test_knn_triton_100k_points(cloud):
    n, k = 100_000, 16
    gen = torch.Generator(device='cuda').manual_seed(0)
    if cloud == 'uniform':
        pos = torch.rand(n, 3, device='cuda', generator=gen)
    else:  # dense blobs of very different scales and sparse outliers
        centres = torch.rand(20, 3, device='cuda', generator=gen) * 10
        scale = 10.0 ** -torch.randint(1, 4, (20, 1), device='cuda',
                                       generator=gen)
        which = torch.randint(0, 20, (n, ), device='cuda', generator=gen)
        pos = centres[which] + torch.randn(n, 3, device='cuda',
                                           generator=gen) * scale[which]
        pos[:100] = torch.rand(100, 3, device='cuda', generator=gen) * 10
    out = knn(pos, pos, k, backend='triton')
    _assert_brute_force(out, pos, pos, k)
    queries = torch.rand(5000, 3, device='cuda', generator=gen) * 12 - 1
    out = knn(pos, queries, k, backend='triton')
    _assert_brute_force(out, pos, queries, k)


@pytest.mark.parametrize('sizes', [[10_000] * 32, [20_000, 300, 0, 7]])
def test_fps_triton_equals_fallback(sizes):
    # 10,000 points keep distances in registers, 20,000 stream them.
    pos = torch.rand(sum(sizes), 3, device='cuda')
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes)).cuda()
    for random_start in [False, True]:
        # The same random start for both: the generator is re-seeded.
        out = [torch.manual_seed(1) and fps(pos, batch, 0.1024, random_start,
                                            backend=backend)
               for backend in ('triton', 'torch')]
        assert torch.equal(*out)


def _count_syncs(fn, checks=False):
    torch.cuda.synchronize()
    with value_checks(checks), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    # PyTorch's notice that the debug mode is a prototype (once per
    # process) is no synchronisation.
    return [str(w.message) for w in caught if 'synchroniz' in
            str(w.message) and 'debug mode' not in str(w.message)]


def test_triton_ops_read_the_host_once():
    # Without value checks and with batch_size given, the only
    # synchronisation is the one that sizes the output.
    pos = torch.randn(64 * 1024, 3, device='cuda')
    batch = torch.arange(64, device='cuda').repeat_interleave(1024)

    def run_knn():
        knn(pos, pos, 16, batch, batch, batch_size=64, backend='triton')

    def run_fps():
        fps(pos, batch, 0.25, batch_size=64, backend='triton')

    for fn in (run_knn, run_fps):
        fn()  # compiles the kernels
        syncs = _count_syncs(fn)
        assert len(syncs) == 1, syncs


def test_rotation_invariant_classifier_uses_triton_and_matches(spy):
    from samsa_geo.ops._triton import knn as knn_kernel
    calls = spy(knn_kernel, 'knn_triton', keep_args=False)
    model = SamsaPointClassifier.small(40, rotation_invariant=True).cuda()
    model.eval()
    pos = torch.randn(16 * 1024, 3, device='cuda')
    batch = torch.arange(16, device='cuda').repeat_interleave(1024)
    with torch.no_grad():
        out = model(pos, batch)
        assert len(calls) == 1
        with use_backend('torch'):
            ref = model(pos, batch)
    assert len(calls) == 1
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(pos, batch), ref, atol=1e-3,
                              rtol=1e-3)


class _CountingKernel:
    """Counts the launches that go through Triton's own call."""
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.kernel[grid]


def test_launcher_direct_launches_equal_tritons(monkeypatch):
    from samsa_geo.nn.attention import _topk_triton as topk
    from samsa_geo.ops._triton.launch import hooks_unset
    launcher = topk._launch_select_topk
    counting = _CountingKernel(launcher.kernel)
    monkeypatch.setattr(launcher, 'kernel', counting)
    monkeypatch.setattr(launcher, 'cache', {})
    assert hooks_unset()
    B, n, H, k = 6, 300, 8, 37
    flat = torch.randn(B * n * H + 1, device='cuda')
    for offset, calls in [(0, 1), (1, 2)]:  # aligned, then 4 bytes off
        score = flat[offset:offset + B * n * H].view(B * n, H)
        assert (score.data_ptr() % 16 == 0) == (offset == 0)
        ref = score.view(B, n, H).topk(k, dim=1).indices  # [B, k, H]
        ref = (ref + torch.arange(B, device='cuda').view(B, 1, 1) * n)
        ref = ref.transpose(1, 2).sort(-1).values  # [B, H, k]
        for _ in range(3):
            idx = topk.select_topk_triton(score, None, None, B, n, k, k)
            assert torch.equal(idx.sort(-1).values, ref)
        assert counting.calls == calls  # the other launches were direct
    assert len(launcher.cache) == 2
