import pytest
import torch

from samsa_geo.testing.needle_task import (
    NeedleModel,
    needle_sets,
    train_needle,
)


def test_needle_sets():
    gen = torch.Generator().manual_seed(0)
    x, batch, y, needle = needle_sets(5, num_tokens=20, num_classes=3,
                                      noise_channels=2, generator=gen)
    assert x.shape == (100, 1 + 3 + 2)
    assert torch.equal(batch, torch.arange(5).repeat_interleave(20))
    marker = x[:, 0].view(5, 20)
    assert torch.equal(marker.sum(1), torch.ones(5))  # one needle per set
    assert torch.equal(marker.argmax(1), needle)
    answer = x[:, 1:4].view(5, 20, 3).argmax(-1)
    assert torch.equal(answer[torch.arange(5), needle], y)


def test_needle_recall_of_an_ideal_scorer():
    x, batch, y, needle = needle_sets(8, num_tokens=32)
    model = NeedleModel(x.size(1), 16, 4, k=4).eval()
    assert model(x, batch, 8, 32).shape == (8, 4)
    with torch.no_grad():  # score = marker: the needle always ranks first
        model.lin_in.weight.zero_()
        model.lin_in.bias.zero_()
        model.lin_in.weight[0, 0] = 1.0
        scorer = model.attn.scorer
        for lin in (scorer.score_nn[0], scorer.score_nn[2], scorer.lin):
            lin.weight.zero_()
            lin.bias.zero_()
        scorer.lin.weight[0, 0] = 1.0
    assert model.needle_recall(x, needle, 8, 32) == 1.0


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_scorer_learns_the_needle(sampling):
    # Once the rest of the model reads the needle (100 teacher steps), the
    # relaxation's gradient alone must rank it into the top k = 4 of 64
    # (chance recall 1/16); measured: hard 300 steps, soft 200.
    result = train_needle(0, sampling, steps=600, num_tokens=64,
                          teacher_steps=100)
    assert result.steps is not None, result
    assert result.recall >= 0.9, result


@pytest.mark.slow
@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_scorer_learns_the_needle_on_every_seed(sampling):
    # k = 4 of 128 tokens, 10 seeds, within 1,000 steps (100 teacher steps).
    results = [train_needle(seed, sampling, steps=1000, teacher_steps=100)
               for seed in range(10)]
    assert sum(r.steps is not None for r in results) >= 9, results


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
@pytest.mark.parametrize('scorer_norm', [False, True])
def test_summary_key_learns_the_needle_from_scratch(sampling, scorer_norm):
    # With the score-pooled summary key the scorer ranks the needle into
    # the top k = 4 of 64 from the first step on, no teacher steps
    # (measured: 300 steps in both modes on seed 1, with and without the
    # scorer's input LayerNorm).
    result = train_needle(1, sampling, steps=600, num_tokens=64,
                          attn_kwargs=dict(summary=True,
                                           scorer_norm=scorer_norm))
    assert result.steps is not None, result
    assert result.recall >= 0.9, result


@pytest.mark.slow
@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_scorer_learns_the_needle_from_scratch(sampling):
    # Issue 14: k = 4 of 128 tokens, 1,000 steps from scratch, >= 9 of 10
    # seeds reach 95 % accuracy; met with the summary key and the scorer's
    # input LayerNorm (docs/convergence.md: 40 of 40 seeds in each mode).
    results = [train_needle(seed, sampling, steps=1000,
                            attn_kwargs=dict(summary=True, scorer_norm=True))
               for seed in range(10)]
    assert sum(r.steps is not None for r in results) >= 9, results
