"""samsa_geo's Triton kernels for kNN and FPS, run on CPU by Triton's
interpreter (the same kernels run compiled on a GPU: there these tests run
on CUDA, and ``tests/gpu/test_ops_triton.py`` adds large inputs)."""
import pytest
import torch

from samsa_geo.ops import (
    _triton,
    fps,
    knn,
    knn_graph,
    knn_neighbours,
    radius,
    value_checks,
)
from samsa_geo.ops._fallback import blocks as distance_blocks

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernels(triton_modules):
    return triton_modules('samsa_geo.ops._triton.knn',
                          'samsa_geo.ops._triton.fps')


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(sizes)).to(DEVICE)


def _stable_reference(x, y, k, batch_x, batch_y):
    # Brute force: the fallback's float32 distances to every candidate of
    # the example, equal distances in index order.
    rows, cols = [], []
    for i in range(y.size(0)):
        cand = (batch_x == batch_y[i]).nonzero().view(-1)
        dist = distance_blocks.distances(y[i:i + 1].t(), x[cand].t(),
                                         False)[0]
        order = dist.argsort(stable=True)[:k]
        rows += [i] * order.numel()
        cols += cand[order].tolist()
    return torch.tensor([rows, cols], dtype=torch.long,
                        device=x.device).view(2, -1)


CASES = {
    # sizes_x, sizes_y, k, features: examples smaller than k, empty ones.
    'graph_3d': ([30, 0, 20, 3], None, 5, 3),
    'queries_2d': ([30, 50, 0], [7, 0, 12], 4, 2),
    'line_1d': ([45], [20], 3, 1),
}


@pytest.fixture(params=['dense', 'tiled'])
def knn_kernel(request, kernels, monkeypatch):
    # The kernel that knn_triton picks: the dense one for batches of small
    # examples, the tiled one (forced here) for large examples.
    knn_module, _ = kernels
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE',
                        4096 if request.param == 'dense' else 0)
    return request.param


@pytest.mark.parametrize('case', list(CASES))
def test_knn_triton_equals_brute_force(knn_kernel, case):
    sizes_x, sizes_y, k, num_features = CASES[case]
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(sum(sizes_x), num_features, generator=gen).to(DEVICE)
    batch_x = _batch(sizes_x)
    if sizes_y is None:
        y, batch_y = x, batch_x
    else:
        y = torch.rand(sum(sizes_y), num_features, generator=gen).to(DEVICE)
        y = y * 1.5 - 0.25  # queries inside and outside the candidates' box
        batch_y = _batch(sizes_y)
    expected = _stable_reference(x, y, k, batch_x, batch_y)
    for batch_size in [None, len(sizes_x)]:  # read at once, or deferred
        out = knn(x, y, k, batch_x, batch_y, batch_size=batch_size,
                  backend='triton')
        assert torch.equal(out, expected)
    # Random points have no ties: the pure-PyTorch path agrees exactly.
    assert torch.equal(out, knn(x, y, k, batch_x, batch_y, backend='torch'))
    table = knn_neighbours(x, y, k, batch_x, batch_y, backend='triton')
    assert torch.equal(table, knn_neighbours(x, y, k, batch_x, batch_y,
                                             backend='torch'))
    assert torch.equal(table[table >= 0], expected[1])
    if sizes_y is None:
        graph = knn_graph(x, k, batch_x, backend='triton')
        assert torch.equal(graph, knn_graph(x, k, batch_x, backend='torch'))


@pytest.mark.filterwarnings('ignore:overflow encountered')
def test_knn_triton_overflowing_distances_stay_in_example(knn_kernel):
    # Points about 1e20 apart: their float32 squared distances overflow to
    # +inf. They rank after every finite distance of their example, in
    # index order, and never after another example's candidates, which
    # the kernels rank as +inf (as the fallback does, see
    # _fallback.blocks.exclude).
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(3, 3, generator=gen) * 1e20,
                   torch.randn(10, 3, generator=gen)]).to(DEVICE)
    batch = _batch([3, 10])
    assert torch.isinf((x[0] - x[1]).square().sum())  # the premise
    for batch_size in [None, 2]:
        out = knn(x, x, 5, batch, batch, batch_size=batch_size,
                  backend='triton')
        assert out.size(1) == 3 * 3 + 10 * 5
        assert (batch[out[0]] == batch[out[1]]).all()
        # Each point of example 0: itself, then the other two by index.
        assert out[:, :9].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2],
                                       [0, 1, 2, 1, 0, 2, 2, 0, 1]]
        assert torch.equal(out[:, 9:], _stable_reference(
            x, x, 5, batch, batch)[:, 9:])
    # The pure-PyTorch path finds the same neighbours (its top-k may order
    # the tied overflowing distances otherwise).
    ref = knn(x, x, 5, batch, batch, backend='torch')
    assert torch.equal(ref[:, 9:], out[:, 9:])
    assert torch.equal(ref[1, :9].view(3, 3).sort(dim=1).values,
                       out[1, :9].view(3, 3).sort(dim=1).values)


def test_knn_triton_ties_by_index_and_box_skips(knn_kernel, kernels,
                                                monkeypatch):
    # Duplicated lattice points tie exactly: equal distances come in index
    # order. Without the tiles near each block ranked first, every tile
    # goes through the box bound; the result is the same.
    base = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0),
                                      indexing='ij'), -1).view(-1, 2)
    x = torch.cat([base, base.flip(0), base[:5]]).to(DEVICE)  # [37, 2]
    perm = torch.randperm(x.size(0), generator=torch.Generator().
                          manual_seed(2)).to(DEVICE)
    x = x[perm]
    batch = torch.zeros(x.size(0), dtype=torch.long, device=DEVICE)
    knn_module, _ = kernels
    for near in [knn_module.NEAR_TILES, 0]:
        monkeypatch.setattr(knn_module, 'NEAR_TILES', near)
        out = knn(x, x, 6, batch, batch, backend='triton')
        assert torch.equal(out, _stable_reference(x, x, 6, batch, batch))
    # Clustered examples far apart: boxes of other clusters are skipped.
    gen = torch.Generator().manual_seed(4)
    y = torch.cat([torch.randn(20, 3, generator=gen) * 0.01 + c
                   for c in (0.0, 5.0, -7.0)]).to(DEVICE)
    zeros = torch.zeros(60, dtype=torch.long, device=DEVICE)
    out = knn(y, y, 4, backend='triton')
    assert torch.equal(out, _stable_reference(y, y, 4, zeros, zeros))


# (BLOCK_Q, BLOCK_P, warps) of the dense kernel: examples within one tile
# and examples spanning several tiles (merged lists of the tiles).
DENSE_CONFIGS = [(16, 64, 1), (8, 16, 1), (32, 8, 1)]


SIZES_SCRIPT = r'''
import torch
from samsa_geo.ops._triton import knn
from samsa_geo.testing.triton_compile import (
    launched_kernels, recorded_launches)

with recorded_launches() as launches:
    for sizes in [[1024] * 32, [1000, 1003, 17], [999] * 19, [1000],
                  [3000, 2500], [4097, 4100, 4211], [2048] * 16, [5000]]:
        x = torch.rand(sum(sizes), 3)
        batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                        torch.tensor(sizes))
        knn.knn_triton(x, x, 16, batch, batch, len(sizes))
kernels = launched_kernels(launches)
print('launched', sorted({fn.__name__ for fn, *_ in launches}))
# Kernels beyond one per function and constexpr values.
print('extra', len(kernels) - len({
    (fn.__name__, tuple(sorted(const.items()))) for fn, _, const, *_
    in kernels}))
'''


def test_batch_sizes_compile_no_new_kernel(compiled_run):
    # Batches of clouds of other sizes (divisible by 16 or not, 1, 3, 16
    # or 19 examples) launch each kNN kernel in one specialisation per
    # constexpr choice (its block sizes, one example or several), as a
    # CUDA call would compile them: a new one would compile for seconds on
    # the first such batch. The launches are recorded, not run.
    out = compiled_run(SIZES_SCRIPT)
    assert ("launched ['_dense_knn_kernel', '_gather_kernel', "
            "'_knn_kernel', '_morton_kernel']") in out
    assert 'extra 0' in out


@pytest.mark.parametrize('config', DENSE_CONFIGS)
def test_knn_dense_paths_equal_brute_force(kernels, monkeypatch, config):
    from samsa_geo.ops._triton import knn_dense
    knn_module, _ = kernels
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE', 4096)
    monkeypatch.setattr(knn_dense, 'dense_config', lambda size: config)
    sizes = [30, 0, 41, 3]
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(sum(sizes), 3, generator=gen)
    x[:40] = (x[:40] * 2).round() / 2  # many exact ties
    x = x.to(DEVICE)
    batch = _batch(sizes)
    for k in [4, 1]:
        out = knn(x, x, k, batch, batch, batch_size=4, backend='triton')
        assert torch.equal(out, _stable_reference(x, x, k, batch, batch))


def test_knn_triton_value_checks_and_deferred_read(knn_kernel):
    # With batch_size given, the dense kernel's checks are read with the
    # empty-slot count after the kernel (the tiled kernel's before it):
    # the errors are the same.
    x = torch.rand(12, 3, device=DEVICE)
    batch = _batch([5, 7])
    bad = x.clone()
    bad[3, 1] = float('nan')
    for batch_size in [None, 2]:
        with pytest.raises(ValueError, match="'x' to hold finite"):
            knn(bad, bad, 3, batch, batch, batch_size=batch_size,
                backend='triton')
        with pytest.raises(ValueError, match="'batch_x' to be sorted"):
            knn(x, x, 3, batch.flip(0), batch.flip(0),
                batch_size=batch_size, backend='triton')
    with pytest.raises(ValueError, match="'batch_size' to be at least"):
        knn(x, x, 3, batch, batch, batch_size=1, backend='triton')
    with value_checks(False):  # nothing to read: the table as is
        table = knn_neighbours(x, x, 3, batch, batch, 2, backend='triton')
    assert torch.equal(table, knn_neighbours(x, x, 3, batch, batch,
                                             backend='torch'))


def test_knn_checks_launch_after_the_dense_kernel(knn_kernel, kernels,
                                                  monkeypatch):
    # Given batch_size, the dense kernel is launched before the value
    # checks (the host issues them while the GPU ranks); the tiled kernel
    # and calls that must infer the number of examples read them first.
    from samsa_geo.ops import _utils
    from samsa_geo.ops._triton import launch
    knn_module, _ = kernels
    order = []
    collect, dense = _utils.collect_values, knn_module.knn_dense
    tiled = knn_module._launch_knn.kernel
    monkeypatch.setattr(_utils, 'collect_values',
                        lambda *a: order.append('checks') or collect(*a))
    monkeypatch.setattr(knn_module, 'knn_dense',
                        lambda *a: order.append('kernel') or dense(*a))

    class Tiled:
        def __getitem__(self, grid):
            order.append('kernel')
            return tiled[grid]

    monkeypatch.setattr(knn_module._launch_knn, 'kernel', Tiled())
    # Every launch through Triton's call (none kept for a direct one).
    monkeypatch.setattr(knn_module._launch_knn, 'cache', {})
    monkeypatch.setattr(launch, 'MAX_ENTRIES', 0)
    x = torch.rand(12, 3, device=DEVICE)
    batch = _batch([5, 7])
    ref = _stable_reference(x, x, 3, batch, batch)
    out = knn(x, x, 3, batch, batch, batch_size=2, backend='triton')
    assert torch.equal(out, ref)
    assert order == (['kernel', 'checks'] if knn_kernel == 'dense'
                     else ['checks', 'kernel'])
    order.clear()
    out = knn(x, x, 3, batch, batch, backend='triton')
    assert torch.equal(out, ref) and order == ['checks', 'kernel']


@pytest.mark.parametrize('register_points', [4096, 16])
def test_fps_triton_equals_fallback(kernels, monkeypatch, register_points):
    # Both kernel variants: coordinates in registers, and streamed in
    # blocks (forced small here) with the distances in a scratch buffer.
    _, fps_kernel = kernels
    monkeypatch.setattr(fps_kernel, 'REGISTER_POINTS', register_points)
    monkeypatch.setattr(fps_kernel, 'STREAM_BLOCK', 16)
    sizes = [40, 0, 23, 1]
    gen = torch.Generator().manual_seed(5)
    pos = torch.rand(sum(sizes), 3, generator=gen).to(DEVICE)
    # Ties: a duplicated point must lose to the first copy.
    pos[30] = pos[25]
    batch = _batch(sizes)
    for random_start in [False, True]:
        torch.manual_seed(6)
        out = fps(pos, batch, 0.3, random_start, backend='triton')
        torch.manual_seed(6)
        ref = fps(pos, batch, 0.3, random_start, backend='torch')
        assert torch.equal(out, ref)
    line = torch.rand(30, 1, generator=gen).to(DEVICE)
    assert torch.equal(fps(line, None, 1.0, False, backend='triton'),
                       fps(line, None, 1.0, False, backend='torch'))


def test_knn_custom_operator(kernels):
    x = torch.rand(20, 3, device=DEVICE)
    batch = torch.zeros(20, dtype=torch.long, device=DEVICE)
    nbr = torch.ops.samsa_geo.knn_neighbours(x, x, 3, batch, batch, 1, True)
    assert nbr.size() == (2, 20, 3)
    rows = torch.arange(20, device=DEVICE)
    assert torch.equal(nbr[0], rows.view(-1, 1).expand(-1, 3))
    assert torch.equal(nbr[1, :, 0], rows)
    torch.library.opcheck(torch.ops.samsa_geo.knn_neighbours.default,
                          (x, x, 3, batch, batch, 1, True),
                          test_utils=('test_schema', 'test_faketensor'))


def test_triton_backend_selection():
    x = torch.rand(10, 3)
    # 'auto' never runs the interpreter on CPU tensors.
    assert not _triton.knn_supported(x, x, 4, False)
    assert not _triton.fps_supported(x)
    with pytest.raises(ValueError, match="'backend'"):
        radius(x, x, 0.5, backend='triton')
    if not _triton.HAS_TRITON or (DEVICE == 'cpu'
                                  and not _triton.INTERPRETED):
        return
    x = x.to(DEVICE)
    assert _triton.knn_supported(x, x, 4, False, forced=True)
    for kwargs in [dict(cosine=True), dict(k=65)]:
        args = dict(k=4, backend='triton')
        args.update(kwargs)
        with pytest.raises(ValueError, match='Triton kernel does not'):
            knn(x, x, **args)
    with pytest.raises(ValueError, match='Triton kernel does not'):
        knn(x.double(), x.double(), 4, backend='triton')
    with pytest.raises(ValueError, match='Triton kernel does not'):
        fps(torch.rand(10, 4, device=DEVICE), backend='triton')


COMPILE_SCRIPT = r'''
from samsa_geo.ops._triton import fps, knn, knn_dense
from samsa_geo.testing.triton_compile import compile_for_sm90

ptrs = dict(xs='*fp32', ids='*i32', key_x='*i64', ys='*fp32', y_ids='*i32',
            key_y='*i64', ptr_x='*i64', ptr_y='*i64', first='*i64',
            tile_box='*fp32', out='*i64', missing='*i64', x='*fp32',
            y='*fp32', batch_x='*i64', batch_y='*i64')
kernels = []
for F, KP, BM, same in [(3, 16, 32, True), (2, 32, 32, False),
                        (1, 64, 16, False)]:
    const = dict(F=F, KP=KP, SAME=same, COUNT=same, BLOCK_M=BM, BLOCK_N=32,
                 BLOCK_T=64, NEAR=2)
    sig = {a: ptrs.get(a, 'i32') for a in knn._knn_kernel.arg_names
           if a not in const}
    kernels.append((knn._knn_kernel, sig, const, 4))
for F, KP, count in [(3, 16, True), (2, 64, False)]:
    block_q, block_p, warps = knn_dense.dense_config(1024)
    const = dict(F=F, KP=KP, HAS_BATCH=count, COUNT=count, BLOCK_Q=block_q,
                 BLOCK_P=block_p)
    sig = {a: ptrs.get(a, 'i32') for a in knn_dense._dense_knn_kernel.arg_names
           if a not in const}
    kernels.append((knn_dense._dense_knn_kernel, sig, const, warps))
sig = dict(src='*fp32', stride_n='i32', stride_f='i32', perm='*i64', N='i32',
           dst='*fp32', n_pad='i32', ids='*i32', box='*fp32', t_pad='i32')
kernels.append((knn._gather_kernel, sig, dict(F=3, BOX=True, BLOCK=32), 4))
sig = dict(pos='*fp32', stride_n='i32', stride_f='i32', batch='*i64',
           lo='*fp32', scale='*fp32', key='*i64', N='i32')
kernels.append((knn._morton_kernel, sig, dict(F=3, HAS_BATCH=True,
                                              BLOCK=1024), 4))
sig = dict(pos='*fp32', n_pad='i32', ptr='*i64', start='*i64',
           num_samples='*i64', offset='*i64', scratch='*fp32', out='*i64')
for block, in_registers in [(4096, True), (2048, False)]:
    kernels.append((fps._fps_kernel, sig, dict(
        F=3, BLOCK=block, IN_REGISTERS=in_registers), 16))
print('compiled', compile_for_sm90(kernels, enable_fp_fusion=False))
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90(compiled_run):
    # The interpreter runs the kernels' Python; this compiles them to
    # H100/H200 machine code (no GPU needed), as a launch on CUDA would.
    assert 'compiled 9' in compiled_run(COMPILE_SCRIPT)


@pytest.mark.parametrize('config', DENSE_CONFIGS)
def test_knn_dense_near_ties_in_distance_order(kernels, monkeypatch,
                                               config):
    # The dense kernel ranks a tile by coarse keys (a distance's leading
    # bits and the column), then orders the chosen by exact distance, and
    # ranks again exactly where the last chosen key's class holds more
    # candidates. Distances that differ in their last bits only, in an
    # index order unlike their distance order, test both: a class of 12
    # near-equal candidates that the k-th place falls into (ranked again),
    # and a class of two wholly chosen (ordered by exact distance).
    from samsa_geo.ops._triton import knn_dense
    knn_module, _ = kernels
    monkeypatch.setattr(knn_module, 'DENSE_MEAN_SIZE', 4096)
    monkeypatch.setattr(knn_dense, 'dense_config', lambda size: config)
    gen = torch.Generator().manual_seed(11)
    ulp = 2.0 ** -22  # near 1: distances differ in their last bits
    crowd = 1.0 + ulp * torch.randperm(12, generator=gen).double()
    pair = 1.5 + ulp * torch.tensor([3.0, 1.0])
    far = torch.tensor([0.5, 2.5, 3.0, 4.0])
    x = torch.cat([crowd, pair, far])[torch.randperm(18, generator=gen)]
    x = x.float().view(-1, 1).to(DEVICE)  # [18, 1]
    y = torch.zeros(2, 1, device=DEVICE)  # queries at 0
    batch_x = torch.zeros(18, dtype=torch.long, device=DEVICE)
    batch_y = torch.zeros(2, dtype=torch.long, device=DEVICE)
    dist = x.view(-1).double() ** 2
    assert dist.unique().numel() == 18  # no exact ties
    for k in [5, 3, 16]:
        out = knn(x, y, k, batch_x, batch_y, batch_size=1, backend='triton')
        expected = _stable_reference(x, y, k, batch_x, batch_y)
        assert torch.equal(out, expected)
        # The neighbours by exact distance (no ties here).
        first = out[1][:k]
        assert torch.equal(first, dist.argsort()[:k].to(DEVICE))
