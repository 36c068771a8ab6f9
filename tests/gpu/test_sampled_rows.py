"""Keys and values of the sampled rows alone (the general path, from
SAMPLED_ROWS_MIN_TOKENS tokens in evaluation and
TRAINING_SAMPLED_ROWS_MIN_TOKENS in training, there with the scorer's
backward on their rows) on the GPU, run on the GPU machine with
``pytest -m gpu tests/gpu``."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention import samsa_attention
from samsa_geo.nn.conv.samsa_conv import CUDA_GRAPH_MAX_ELEMENTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _spy_on_the_path(monkeypatch):
    # The list of what every call's choice of the sampled rows' path was.
    taken = []
    original = SamsaAttention._projects_sampled_rows

    def spy(self, *args, **kwargs):
        taken.append(original(self, *args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows', spy)
    return taken


def _assert_gradients_close(grads, ref_grads):
    # Within 5% of each bf16 gradient, with an absolute floor. Some
    # gradients are zero but for rounding: the scorer's head biases (a
    # pair's two scores get opposite gradients), lin_kv's bias (a key bias
    # shifts all of a query's logits alike, which the softmax cancels; a
    # value bias shifts every output row alike, which the batch norm after
    # the attention cancels) and lin_out's. Their values are rounding
    # noise of either path; below a thousandth of the largest gradient in
    # the reference, both must stay there.
    assert grads.keys() == ref_grads.keys()
    scale = max(float(r.norm()) for r in ref_grads.values())
    for name, r in ref_grads.items():
        if float(r.norm()) < 1e-3 * scale:
            assert float(grads[name].norm()) < 1e-3 * scale, name
            continue
        err = float((grads[name] - r).norm())
        assert err <= 5e-2 * float(r.norm()) + 1e-4 * scale, name


@pytest.mark.parametrize('B,n', [(1, 262144), (2, 140000)])
def test_the_layer_equals_its_full_projection(monkeypatch, B, n):
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().eval()
    x = torch.randn(B * n, 256, device='cuda')
    batch = torch.arange(B, device='cuda').repeat_interleave(n)
    taken = _spy_on_the_path(monkeypatch)

    def run():
        with torch.autocast('cuda', dtype=torch.bfloat16), torch.no_grad():
            return conv(x, None, batch, num_graphs=B, max_num_nodes=n,
                        return_attention_weights=True)

    out, (idx, _) = run()
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args, **kwargs: False)
    ref, (ref_idx, _) = run()
    assert torch.equal(idx, ref_idx)  # the scores do not read the keys
    # bf16 keys and values rounded from other GEMMs: within a few ulps.
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    assert (out - ref).abs().mean() < 2e-3
    assert samsa_attention.SAMPLED_ROWS_MIN_TOKENS <= B * n


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_training_on_the_sampled_rows_equals_the_full_projection(
        monkeypatch, sampling):
    # A bf16 training step at 262,144 tokens: keys and values of the top
    # and bottom sets projected alone, the scorer's backward on their rows
    # (with the Triton kernels), against every token projected; the output
    # and every gradient within bf16 rounding.
    B, n = 1, 262144
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256,
                     attn_kwargs={'sampling': sampling}).cuda().train()
    x = torch.randn(B * n, 256, device='cuda')
    batch = torch.zeros(B * n, dtype=torch.long, device='cuda')
    g = torch.randn(B * n, 256, device='cuda',
                    generator=torch.Generator('cuda').manual_seed(2))

    def step():
        conv.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = conv(x_, None, batch, num_graphs=B, max_num_nodes=n)
        (out.float() * g).sum().backward()
        grads = {name: p.grad.float().clone()
                 for name, p in conv.named_parameters() if p.grad is not None}
        return out.detach().float(), x_.grad, grads

    taken = _spy_on_the_path(monkeypatch)
    out, x_grad, grads = step()
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args, **kwargs: False)
    ref, ref_x_grad, ref_grads = step()

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp(min=1e-12))

    assert rel(out, ref) < 2e-2 and rel(x_grad, ref_x_grad) < 2e-2
    assert grads.keys() == ref_grads.keys()
    assert 'attn.lin_kv.weight' in grads
    assert 'attn.scorer.score_nn.0.weight' in grads
    _assert_gradients_close(grads, ref_grads)


def test_replayed_training_steps_on_the_sampled_rows(monkeypatch):
    # From TRAINING_SAMPLED_ROWS_MIN_TOKENS tokens the training steps that
    # SamsaConv replays as CUDA graphs (bf16, 1 x 65,536 tokens: eager,
    # eager, captured, replayed) project the top and bottom sets' rows
    # alone; the replayed step's output and gradients equal those of the
    # same step with every token projected (the switch off) within bf16
    # rounding.
    from samsa_geo.nn.attention import config
    n = 65536
    assert samsa_attention.TRAINING_SAMPLED_ROWS_MIN_TOKENS <= n
    assert n * 256 <= CUDA_GRAPH_MAX_ELEMENTS  # replayed, not eager
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().train()
    x = torch.randn(n, 256, device='cuda')
    batch = torch.zeros(n, dtype=torch.long, device='cuda')
    g = torch.randn(n, 256, device='cuda',
                    generator=torch.Generator('cuda').manual_seed(2))
    taken = _spy_on_the_path(monkeypatch)

    def step():
        conv.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = conv(x_, None, batch, num_graphs=1, max_num_nodes=n)
        (out.float() * g).sum().backward()
        grads = {name: p.grad.float().clone()
                 for name, p in conv.named_parameters() if p.grad is not None}
        return out.detach().float(), x_.grad, grads

    results = {}
    for rows in (True, False):
        taken.clear()
        with config.attention_config(sampled_rows=rows):
            for _ in range(4):
                results[rows] = step()
        # The eager steps and the capture chose the path; the replay ran
        # no Python.
        assert taken == [rows] * 3
    assert len(conv._train_graphs) == 2
    (out, x_grad, grads), (ref, ref_x_grad, ref_grads) = \
        results[True], results[False]

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp(min=1e-12))

    assert rel(out, ref) < 2e-2 and rel(x_grad, ref_x_grad) < 2e-2
    assert grads.keys() == ref_grads.keys()
    assert 'attn.lin_kv.weight' in grads
    _assert_gradients_close(grads, ref_grads)


@pytest.mark.parametrize('sizes', [[65536], [40000, 0, 25536]])
def test_replayed_fused_calls_equal_their_full_projection(monkeypatch,
                                                          sizes):
    # The fused inference path from FUSED_SAMPLED_ROWS_MIN_TOKENS tokens,
    # in the CUDA graphs of SamsaConv (bf16): keys and values of the
    # selected rows alone, projected between the selection and the
    # attention kernel, against every token's (the switch off, and the
    # eager calls before the capture).
    from samsa_geo.nn.attention import config
    torch.manual_seed(0)
    B, N, n = len(sizes), sum(sizes), max(sizes)
    assert samsa_attention.FUSED_SAMPLED_ROWS_MIN_TOKENS <= N
    conv = SamsaConv(256, None, heads=8, k=256).cuda().eval()
    x = torch.randn(N, 256, device='cuda')
    batch = torch.repeat_interleave(torch.arange(B, device='cuda'),
                                    torch.tensor(sizes, device='cuda'))
    taken = _spy_on_the_path(monkeypatch)
    outs = {}
    for rows in (True, False):
        # Eager, eager, captured and replayed, replayed.
        with config.attention_config(sampled_rows=rows), \
                torch.autocast('cuda', dtype=torch.bfloat16), \
                torch.no_grad():
            outs[rows] = [conv(x, None, batch, num_graphs=B,
                               max_num_nodes=n).float() for _ in range(4)]
    assert len(conv._graphs) == 2
    assert taken == [False, False, True] + [False] * 3
    eager, replayed, again = outs[True][0], outs[True][2], outs[True][3]
    assert torch.equal(again, replayed)
    assert torch.equal(outs[False][2], outs[False][0])
    for ref in (eager, outs[False][2]):
        torch.testing.assert_close(replayed, ref, rtol=2e-2, atol=2e-2)
        assert (replayed - ref).abs().mean() < 2e-3
    assert torch.equal(eager, outs[False][0])  # eager calls: every row
