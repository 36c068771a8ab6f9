import importlib
import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors.
# Triton reads the switch when it and the kernels are imported, so it is set
# before anything imports them (torch_geometric imports Triton).
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# Under pytest-xdist (`-n`), the workers share the machine's cores: each
# takes its share of intra-op threads instead of one per core.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
if _WORKERS:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // _WORKERS))


@pytest.fixture(scope='session')
def triton_modules():
    """``triton_modules(*names)`` imports samsa_geo's Triton kernel modules
    ``names``, or skips the test where they cannot run: Triton missing, or
    a CPU without Triton's interpreter."""
    def load(*names):
        pytest.importorskip('triton')
        if not torch.cuda.is_available() and \
                os.environ.get('TRITON_INTERPRET') != '1':
            pytest.skip('Triton interpreter not enabled')
        modules = tuple(importlib.import_module(n) for n in names)
        return modules if len(modules) > 1 else modules[0]
    return load


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(12345)
    yield


@pytest.fixture(autouse=True)
def _restore_determinism():
    # Trainer(deterministic=True) switches process-wide flags (a test of
    # the GPU suite left them on for every later test); undo them so
    # tests elsewhere in the suite are unaffected.
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    cudnn.deterministic, cudnn.benchmark = before[2:]


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name, keep_args=True)`` wraps the function
    ``module.name`` for the test and returns a list with, per call, its
    positional arguments (or :obj:`None` with ``keep_args=False``: under
    CUDA graphs, arguments kept alive would be pool allocations that the
    graph does not track)."""
    def install(module, name, keep_args=True):
        calls = []
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(args if keep_args else None)
            return fn(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls
    return install


@pytest.fixture
def compiled_run():
    """``compiled_run(script)`` runs a Python script in a fresh process
    without Triton's interpreter (kernels compile to machine code there,
    no GPU needed), fails the test if it fails and returns its output."""
    pytest.importorskip('triton')

    def run(script: str) -> str:
        env = {k: v for k, v in os.environ.items()
               if k != 'TRITON_INTERPRET'}
        env['TRITON_DEFAULT_FP_FUSION'] = '0'
        done = subprocess.run([sys.executable, '-c', script], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout
    return run


@pytest.fixture
def fused_inference_on():
    """The fused inference path of SamsaAttention switched on for one test
    (whatever the process-wide switch says)."""
    from samsa_geo.nn.attention import config
    with config.attention_config(fused_inference=True):
        yield


class _FakeTrainingGraphs:
    # Stands in for the two CUDA graphs of a training call on the CPU: a
    # forward replay runs the function again on the buffers it was
    # captured with (the inputs themselves, for a graph that reads them in
    # place) into the output buffers and keeps its autograd graph, as the
    # captured graph keeps its activations; a backward replay computes the
    # gradients of that last forward run into the inputs' buffers and the
    # packed ones.
    def __init__(self, fn, buffers, targets, own, outputs):
        from samsa_geo.nn.conv._graph_training import pack
        self.fn, self.buffers, self.targets = fn, buffers, targets
        self.own, self.outputs = own, outputs
        self.last = self._run()
        self.outs = [t.detach().clone() for t in self.last]
        self.grad_outs = [torch.zeros_like(t) for t in self.outs]
        grads = self._grads()
        self.input_grads = [None if g is None else g.clone()
                            for g in grads[:own]]
        self.packed, self.layout = pack(grads[own:])
        self.forwards = self.backwards = 0

    def _run(self):
        from samsa_geo.nn.attention import config
        with torch.enable_grad(), config.attention_config(cuda_graphs=False):
            out = self.fn(*self.buffers)
        return tuple(out) if self.outputs else (out, )

    def _grads(self):
        return torch.autograd.grad(self.last, self.targets, self.grad_outs,
                                   retain_graph=True, allow_unused=True)

    def replay_forward(self):
        self.forwards += 1
        self.last = self._run()
        for buf, t in zip(self.outs, self.last):
            buf.copy_(t.detach())

    def replay_backward(self):
        from samsa_geo.nn.conv._graph_training import pack
        self.backwards += 1
        grads = self._grads()
        for buf, g in zip(self.input_grads, grads[:self.own]):
            if buf is not None:
                buf.copy_(g)
        for buf, g in zip(self.packed, pack(grads[self.own:])[0]):
            buf.copy_(g)


class _Replayer:
    def __init__(self, replay):
        self.replay = replay

    def pool(self):
        return (0, 0)


@pytest.fixture
def fake_training_capture(monkeypatch):
    """Training calls captured by :class:`TrainingGraphReplay` get stand-in
    graphs on the CPU (each one's replays run the function again); yields
    the list of stand-ins, one per capture, with their ``forwards`` and
    ``backwards`` replay counts and ``buffers``."""
    from samsa_geo.nn.conv import _graph_training
    captured = []

    def capture_training(fn, buffers, targets, pool, own=0, outputs=False):
        fake = _FakeTrainingGraphs(fn, buffers, targets, own, outputs)
        captured.append(fake)
        return (_Replayer(fake.replay_forward),
                _Replayer(fake.replay_backward), fake.outs, fake.grad_outs,
                fake.input_grads, fake.packed, fake.layout)

    monkeypatch.setattr(_graph_training, 'capture_training',
                        capture_training)
    return captured


@pytest.fixture
def small_graphs():
    """``small_graphs(sizes, in_channels, seed=0, device='cpu')``: a PyG
    ``Batch`` of random graphs with these node counts (empty ones too),
    ``2 n`` random edges each and 3 edge features."""
    from torch_geometric.data import Batch, Data

    def make(sizes, in_channels, seed=0, device='cpu'):
        gen = torch.Generator().manual_seed(seed)
        graphs = []
        for n in sizes:
            ei = torch.randint(0, max(n, 1), (2, 2 * n), generator=gen)
            graphs.append(Data(
                x=torch.randn(n, in_channels, generator=gen), edge_index=ei,
                edge_attr=torch.randn(2 * n, 3, generator=gen)))
        return Batch.from_data_list(graphs).to(device)
    return make


@pytest.fixture
def graph_model_step():
    """``graph_model_step(model, data, weight, switches, dtype=None)``: one
    training step of a graph model on a ``Batch`` (with its
    ``batch_hints``) under the attention ``config`` switches, autocast to
    ``dtype`` if given; returns the output and the float32 gradient of
    every parameter that got one, by name."""
    from samsa_geo.nn import batch_hints
    from samsa_geo.nn.attention import config

    def step(model, data, weight, switches, dtype=None):
        model.zero_grad()
        torch.manual_seed(1)
        device = data.x.device.type
        with config.attention_config(**switches), torch.autocast(
                device, dtype=dtype or torch.bfloat16,
                enabled=dtype is not None):
            out = model(data.x, data.edge_index, data.edge_attr,
                        data.batch, **batch_hints(data))
        (out.float() * weight).sum().backward()
        return out.detach(), {name: p.grad.float().clone() for name, p in
                              model.named_parameters() if p.grad is not None}
    return step


@pytest.fixture
def assert_as_accurate_as_pytorch():
    """``assert_as_accurate_as_pytorch(got, want, exact)``: results of
    a training step (``(output, {name: gradient})``, as
    ``graph_model_step`` returns) in bfloat16 on samsa_geo's kernels
    (``got``) and on PyTorch's path (``want``) are as close to the float32
    step (``exact``): for the output and every gradient, ``got``'s distance to
    ``exact`` is at most twice ``want``'s plus 1e-3 of the largest
    gradient's norm (some gradients are about zero, all rounding: the bias
    of a layer that a batch norm reads, the keys' bias)."""
    def check(got, want, exact):
        def close(a, b, ref, floor, name):
            err, base = float((a - ref).norm()), float((b - ref).norm())
            assert err <= 2 * base + floor, (name, err, base)
        close(got[0], want[0], exact[0], 1e-3 * float(exact[0].norm()),
              'output')
        assert got[1].keys() == want[1].keys() == exact[1].keys()
        scale = max(float(r.norm()) for r in exact[1].values())
        for name, r in exact[1].items():
            close(got[1][name], want[1][name], r, 1e-3 * scale, name)
    return check


class DynamicCompile:
    r"""A layer compiled with dynamic shapes into one graph
    (``fullgraph=True``) on a frame-counting backend (:obj:`counter`), and
    training steps of it against the eager layer."""
    def __init__(self, layer, call):
        from torch._dynamo.testing import CompileCounter
        torch._dynamo.reset()
        self.layer, self.call = layer, call
        self.counter = CompileCounter()
        self.compiled = torch.compile(layer, backend=self.counter,
                                      dynamic=True, fullgraph=True)

    def step(self, fn, sizes, seed):
        r"""``call(fn, x, batch, pos, sizes)`` on sets of these sizes
        (tokens ``x`` :math:`(N, 16)` and positions ``pos`` :math:`(N, 3)`
        drawn from ``seed``) under ``torch.manual_seed(seed)``: its output
        and the gradient of ``x`` (of the output's sum of squares)."""
        batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch.numel(), 16, generator=gen, requires_grad=True)
        pos = torch.randn(batch.numel(), 3, generator=gen)
        torch.manual_seed(seed)
        out = self.call(fn, x, batch, pos, sizes)
        return out, torch.autograd.grad(out.square().sum(), x)[0]

    def assert_equal(self, layouts, first_seed=0):
        r"""The compiled and the eager steps give the same output and
        gradient on every layout (seeds counted from ``first_seed``);
        returns the last eager step's."""
        for seed, sizes in enumerate(layouts, first_seed):
            out, grad = self.step(self.compiled, sizes, seed)
            ref, ref_grad = self.step(self.layer, sizes, seed)
            assert torch.allclose(out, ref, atol=1e-5)
            assert torch.allclose(grad, ref_grad, atol=1e-5)
        return ref, ref_grad


@pytest.fixture
def dynamic_compile():
    """``dynamic_compile(layer, call)``: a :class:`DynamicCompile` of the
    layer, whose steps run ``call(fn, x, batch, pos, sizes)``."""
    return DynamicCompile
