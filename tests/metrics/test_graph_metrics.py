import math

import pytest
import torch

from samsa_geo.metrics import (average_precision_multitask, macro_f1,
                               mean_absolute_error, mrr)


def test_average_precision_hand_computed():
    pred = torch.tensor([[0.9, 0.3, 0.1], [0.8, 0.3, 0.2], [0.7, 0.1, 0.3],
                         [0.6, 0.5, 0.4]])
    nan = float('nan')
    target = torch.tensor([[1., 1., 0.], [0., 0., 0.], [1., nan, 0.],
                           [0., 1., 0.]])
    # Task 0: thresholds 0.9 (P=1, R=.5), 0.7 (P=2/3, R=1): AP = .5 + 1/3.
    # Task 1 (row 2 ignored): 0.5 -> P=1, R=.5; tie at 0.3 -> P=2/3, R=1.
    # Task 2 has no positive: skipped.
    expected = ((0.5 + 1 / 3) + (0.5 + 1 / 3)) / 2
    assert math.isclose(average_precision_multitask(pred, target), expected,
                        rel_tol=1e-12)
    # Only the order of scores matters (logits == probabilities):
    assert math.isclose(average_precision_multitask(torch.logit(pred), target),
                        expected, rel_tol=1e-12)


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip('sklearn.metrics')
    pred = torch.randn(200, 10)
    pred[:, 3] = pred[:, 3].round()  # many ties
    target = (torch.rand(200, 10) < 0.3).float()
    target[torch.rand(200, 10) < 0.1] = float('nan')
    target[:, 7] = 0.0  # no positive: skipped
    ref = []
    for t in range(10):
        valid = ~torch.isnan(target[:, t])
        if target[valid, t].sum() > 0:
            ref.append(metrics.average_precision_score(
                target[valid, t].numpy(), pred[valid, t].numpy()))
    assert len(ref) == 9
    assert math.isclose(average_precision_multitask(pred, target),
                        sum(ref) / len(ref), rel_tol=1e-9)


def test_average_precision_errors():
    with pytest.raises(ValueError, match="same shape"):
        average_precision_multitask(torch.rand(4, 2), torch.rand(4, 3))
    with pytest.raises(ValueError, match="at least one task"):
        average_precision_multitask(torch.rand(3, 1), torch.zeros(3, 1))


def test_mean_absolute_error():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.5, float('nan')], [2.0, 4.0]])
    assert math.isclose(mean_absolute_error(pred, target), (0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="same shape"):
        mean_absolute_error(pred, target[0])


def test_macro_f1_hand_computed():
    target = torch.tensor([0, 0, 1, 2])
    pred = torch.tensor([0, 1, 1, 1])
    # F1: class 0 = 2/3, class 1 = 2/4, class 2 = 0; class 3, 4 absent.
    expected = (2 / 3 + 0.5 + 0.0) / 3
    assert math.isclose(macro_f1(pred, target, num_classes=5), expected)
    logits = torch.nn.functional.one_hot(pred, 5).float()
    assert math.isclose(macro_f1(logits, target), expected)


def test_macro_f1_matches_sklearn():
    metrics = pytest.importorskip('sklearn.metrics')
    logits = torch.randn(500, 21)
    target = torch.randint(0, 21, (500, ))
    target[target == 4] = 5  # a class never present
    ref = metrics.f1_score(target.numpy(), logits.argmax(-1).numpy(),
                           average='macro')
    assert math.isclose(macro_f1(logits, target), ref, rel_tol=1e-9)


def test_mrr_hand_computed():
    # Graph 0: S = X X^T = [[1, 0, 1], [0, 1, 1], [1, 1, 2]], contacts
    # (0, 1) and (0, 2). Graph 1 (nodes 3, 4) has only a negative pair.
    x = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [1., 0.], [0., 1.]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    edge_label_index = torch.tensor([[0, 0, 3], [1, 2, 4]])
    edge_label = torch.tensor([1, 1, 0])
    out = mrr(x, edge_label_index, edge_label, batch)
    # (0, 1): score 0; raw rivals S00 = S02 = 1 -> rank 3; filtered drops
    # contact 2 -> rank 2; without self -> rank 1.
    # (0, 2): score 1; S00 = 1 is a tie (counted in favour) -> rank 1.
    assert math.isclose(out['mrr'], ((1 / 3 + 1) / 2 + 0) / 2)
    assert math.isclose(out['mrr_filtered'], ((1 / 2 + 1) / 2 + 0) / 2)
    assert math.isclose(out['mrr_filtered_noself'], ((1 + 1) / 2 + 0) / 2)
    single = mrr(x[:3], edge_label_index[:, :2], edge_label[:2])
    assert math.isclose(single['mrr'], 2 / 3)


def _reference_mrr(x, edge_label_index, edge_label, batch):
    # Straightforward per-graph loop following the LRGB definition.
    stats = {'mrr': [], 'mrr_filtered': [], 'mrr_filtered_noself': []}
    for g in range(int(batch.max()) + 1):
        nodes = (batch == g).nonzero().view(-1)
        offset = int(nodes[0])
        xs = x[nodes].double()
        s = xs @ xs.T
        keep = batch[edge_label_index[0]] == g
        pos = edge_label_index[:, keep & (edge_label == 1)] - offset
        if pos.size(1) == 0:
            for v in stats.values():
                v.append(0.0)
            continue
        contacts = set(map(tuple, pos.T.tolist()))
        rr = {k: [] for k in stats}
        for a, b in pos.T.tolist():
            p = s[a, b]
            n = len(nodes)
            raw = [m for m in range(n) if m != b]
            filt = [m for m in range(n) if (a, m) not in contacts]
            nos = [m for m in filt if m != a]
            for key, cand in (('mrr', raw), ('mrr_filtered', filt),
                              ('mrr_filtered_noself', nos)):
                rr[key].append(1.0 / (1 + sum(bool(s[a, m] > p) for m in cand)))
        for k in stats:
            stats[k].append(sum(rr[k]) / len(rr[k]))
    return {k: sum(v) / len(v) for k, v in stats.items()}


def test_mrr_matches_loop_reference():
    sizes = [7, 12, 5, 9]
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), 4)
    pairs, labels, offset = [], [], 0
    for n in sizes:
        src = torch.randint(0, n, (6, )) + offset
        dst = torch.randint(0, n, (6, )) + offset
        pairs.append(torch.stack([src, dst]))
        labels.append(torch.randint(0, 2, (6, )))
        offset += n
    edge_label_index, edge_label = torch.cat(pairs, 1), torch.cat(labels)
    out = mrr(x, edge_label_index, edge_label, batch)
    ref = _reference_mrr(x, edge_label_index, edge_label, batch)
    for key in ref:
        assert math.isclose(out[key], ref[key], rel_tol=1e-6), key
    assert out['mrr'] <= out['mrr_filtered'] <= out['mrr_filtered_noself']


def test_mrr_errors():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same graph"):
        mrr(x, torch.tensor([[0], [3]]), torch.tensor([1]),
            torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="'edge_label' to have shape"):
        mrr(x, torch.tensor([[0], [1]]), torch.tensor([1, 0]))


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_average_precision_non_finite_pred(bad):
    pred = torch.rand(4, 2)
    target = torch.tensor([[0., 1.], [1., 0.], [0., 1.], [1., 0.]])
    pred[2, 1] = bad  # NaN scores used to give AP 0.5
    with pytest.raises(ValueError, match="'pred' to hold no NaN and no"):
        average_precision_multitask(pred, target)


def test_average_precision_masked_scores_rank_last():
    target = torch.tensor([[0., 1.], [1., 0.], [0., 1.], [1., 0.]])
    pred = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    masked = pred.clone()
    masked[0, 0] = float('-inf')  # ranked below every other score
    low = pred.clone()
    low[0, 0] = -1.0
    assert average_precision_multitask(masked, target) == \
        pytest.approx(average_precision_multitask(low, target))


MRR_X = torch.randn(4, 2)
MRR_BATCH = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize('kwargs, error, match', [
    # NaN embeddings used to give a perfect rank.
    (dict(x=torch.full((4, 2), float('nan'))), ValueError,
     "'x' to hold finite values"),
    (dict(x=torch.ones(4, 2, dtype=torch.long)), TypeError,
     "'x' to be a floating-point"),
    (dict(edge_label_index=torch.tensor([[0], [9]])), ValueError,
     r"'edge_label_index' to hold node indices in \[0, 4\)"),
    (dict(edge_label_index=torch.tensor([[-1], [0]])), ValueError,
     r"'edge_label_index' to hold node indices in \[0, 4\)"),
    (dict(edge_label_index=torch.tensor([[0.], [1.]])), TypeError,
     "'edge_label_index' to be an integer"),
    (dict(batch=torch.tensor([1, 1, 0, 0])), ValueError,
     "'batch' to be sorted"),
    (dict(batch=torch.tensor([-1, -1, 0, 0])), ValueError,
     "'batch' to be sorted"),
    (dict(batch=MRR_BATCH.float()), TypeError, "'batch' to be an integer"),
    (dict(batch=MRR_BATCH[:3]), ValueError, r"'batch' to have shape \[4\]"),
])
def test_mrr_bad_input(kwargs, error, match):
    args = dict(x=MRR_X, edge_label_index=torch.tensor([[0], [1]]),
                edge_label=torch.tensor([1]), batch=MRR_BATCH)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        mrr(**args)


def test_mrr_int32_batch_and_no_pairs():
    eli, label = torch.tensor([[0, 2], [1, 3]]), torch.tensor([1, 1])
    ref = mrr(MRR_X, eli, label, MRR_BATCH)
    assert mrr(MRR_X, eli.int(), label, MRR_BATCH.int()) == ref
    none = mrr(MRR_X, eli[:, :0], label[:0], MRR_BATCH)
    assert none == {'mrr': 0.0, 'mrr_filtered': 0.0,
                    'mrr_filtered_noself': 0.0}
