"""SamsaAttention(scorer_norm=True): the importance scorer reads
LayerNorm-ed tokens; its selection, its equivalence to the default layer
with a normalising scorer, and gradients (torch.compile: test_summary.py)."""
import pytest
import torch
from torch.nn import Module

from samsa_geo.nn import SamsaAttention, SamsaConv


def sets(sizes=(9, 20, 5)):
    # Tokens [N, 16] and the sorted batch vector of sets of these sizes.
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch.numel(), 16, generator=g), batch


class _NormalisingScorer(Module):
    # The scorer of a scorer_norm=True layer behind the interface of a
    # stacked one: it drops the hidden rows of the raw tokens.
    def __init__(self, scorer):
        super().__init__()
        self.inner = scorer
        self.score_nn = scorer.score_nn

    def forward(self, x, hidden=None, lin2_weights=None, lin1_inputs=None,
                hooked=None):
        return self.inner(x)


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
@pytest.mark.parametrize('training', [False, True])
def test_equals_the_default_layer_with_a_normalising_scorer(sampling,
                                                            training):
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=4, sampling=sampling, summary=True,
                          scorer_norm=True).train(training)
    with torch.no_grad():  # away from the initial affine
        attn.scorer.norm_in.weight.normal_(1.0, 0.3)
        attn.scorer.norm_in.bias.normal_(0.0, 0.3)
    ref = SamsaAttention(16, heads=2, k=4, sampling=sampling,
                         summary=True).train(training)
    ref.load_state_dict(attn.state_dict(), strict=False)
    ref.scorer = _NormalisingScorer(attn.scorer)
    x, batch = sets()
    torch.manual_seed(1)  # the same Gumbel noise
    out = attn(x, batch)
    torch.manual_seed(1)
    torch.testing.assert_close(out, ref(x, batch), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('sampling', ['hard', 'soft', 'sft'])
def test_selection_ignores_a_per_token_affine_map(sampling):
    # x_i -> a_i x_i + b_i 1 (a_i > 0) changes queries, keys and values
    # but not the normalised tokens the scorer ranks.
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=4, sampling=sampling,
                          scorer_norm=True).eval()
    x, batch = sets()
    a, b = torch.rand(34, 1) * 4.0 + 0.5, torch.randn(34, 1)
    _, idx = attn(x, batch, return_indices=True)
    _, idx_affine = attn(a * x + b, batch, return_indices=True)
    assert torch.equal(idx, idx_affine)
    scores = attn.scorer(x[9:29])  # [20, H'] of the second set
    top = scores.topk(4, dim=0).indices.t() + 9  # [H', 4]
    assert torch.equal(idx[1], top.expand_as(idx[1]))


@pytest.mark.parametrize('sampling', ['hard', 'soft', 'sft'])
def test_every_parameter_gets_a_finite_gradient(sampling):
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=4, sampling=sampling,
                          summary=sampling != 'sft', scorer_norm=True)
    x, batch = sets()
    attn(x.requires_grad_(), batch).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert attn.scorer.norm_in.weight.grad.abs().sum() > 0


def test_conv_passes_the_option_and_bad_arguments():
    conv = SamsaConv(16, None, heads=2, k=4,
                     attn_kwargs=dict(scorer_norm=True))
    assert conv.attn.scorer_norm and 'scorer_norm=True' in str(conv.attn)
    assert conv.attn.scorer.norm_in is not None
    x, batch = sets()
    assert conv(x, batch=batch).shape == (34, 16)
    with pytest.raises(TypeError, match="'scorer_norm' to be a bool"):
        SamsaAttention(16, scorer_norm=1)
    with pytest.raises(ValueError, match="'scorer_norm=False'"):
        SamsaAttention(16, sampling='full', scorer_norm=True)
