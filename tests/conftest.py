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
