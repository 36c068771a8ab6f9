import math

import pytest
import torch

from samsa_geo.metrics import mrr

MRR_KEYS = ['mrr', 'mrr_filtered', 'mrr_filtered_noself']


def _brute_force_hits(x, edge_label_index, edge_label, batch, ks):
    # Independent of samsa_geo: per graph, every positive pair (s, t) is
    # sorted (Python's sort) against the scores of row s that are not a
    # contact of s, ties placed after the pair; Hits@k is the fraction of
    # pairs within the first k places, 0 for a graph without contacts; the
    # result is the mean over graphs.
    per_graph = {k: [] for k in ks}
    for g in range(int(batch.max()) + 1):
        nodes = (batch == g).nonzero().view(-1).tolist()
        offset, n = nodes[0], len(nodes)
        pairs = [(a - offset, b - offset) for (a, b), label in zip(
            edge_label_index.T.tolist(), edge_label.tolist())
            if label == 1 and batch[a] == g]
        if not pairs:
            for k in ks:
                per_graph[k].append(0.0)
            continue
        xs = x[nodes].tolist()
        score = [[sum(p * q for p, q in zip(xs[i], xs[j])) for j in range(n)]
                 for i in range(n)]
        contacts = set(pairs)
        ranks = []
        for s, t in pairs:
            entries = [(score[s][t], 0)] + [(score[s][m], 1) for m in range(n)
                                            if (s, m) not in contacts]
            order = sorted(entries, key=lambda e: (-e[0], e[1]))
            ranks.append(order.index((score[s][t], 0)) + 1)
        for k in ks:
            per_graph[k].append(sum(r <= k for r in ranks) / len(ranks))
    return {f'hits@{k}_filtered': sum(v) / len(v)
            for k, v in per_graph.items()}


def _random_graphs(seed, sizes, pairs_per_graph):
    gen = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), 3, generator=gen, dtype=torch.float64)
    index, labels, offset = [], [], 0
    for g, n in enumerate(sizes):
        index.append(torch.randint(0, n, (2, pairs_per_graph),
                                   generator=gen) + offset)
        label = (torch.rand(pairs_per_graph, generator=gen) < 0.6).long()
        if g == 1:
            label[:] = 0  # a graph without contacts scores 0
        labels.append(label)
        offset += n
    return x, torch.cat(index, 1), torch.cat(labels), batch


def test_hits_hand_computed():
    # Graph 0: S = X X^T = [[1, 0, 1], [0, 1, 1], [1, 1, 2]], contacts
    # (0, 1) and (0, 2): filtered ranks 2 (S00 = 1 > 0) and 1 (tie with
    # S00 counted in favour). Graph 1 has only a negative pair.
    x = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [1., 0.], [0., 1.]])
    batch = torch.tensor([0, 0, 0, 1, 1])
    edge_label_index = torch.tensor([[0, 0, 3], [1, 2, 4]])
    edge_label = torch.tensor([1, 1, 0])
    out = mrr(x, edge_label_index, edge_label, batch, hits=(1, 3, 10))
    assert list(out) == MRR_KEYS + ['hits@1_filtered', 'hits@3_filtered',
                                    'hits@10_filtered']
    assert math.isclose(out['hits@1_filtered'], ((0 + 1) / 2 + 0) / 2)
    assert math.isclose(out['hits@3_filtered'], (1 + 0) / 2)
    assert math.isclose(out['hits@10_filtered'], (1 + 0) / 2)
    # Hits@1 from the filtered ranks, not the raw ones (raw rank of (0, 1)
    # is 3, so a raw Hits@1 and Hits@2 would differ).
    out = mrr(x, edge_label_index, edge_label, batch, hits=[2])
    assert math.isclose(out['hits@2_filtered'], 0.5)


def test_hits_per_graph_mean():
    # Graph 0 (nodes 0, 1): contact (0, 1) ties with S00 = 1 -> rank 1.
    # Graph 1 (local nodes 0-4 at x = [1, 0], [0, 1], [2, 0], [3, 0],
    # [4, 0]), contacts (0, 4), (1, 0), (2, 1), (3, 4):
    # (0, 4): 4 against row 0's [1, 0, 2, 3] -> rank 1;
    # (1, 0): 0 against row 1's [1, 0, 0, 0] -> rank 2;
    # (2, 1): 0 against row 2's [2, 4, 6, 8] -> rank 5;
    # (3, 4): 12 against row 3's [3, 0, 6, 9] -> rank 1.
    # Hits@1 is (1 + 2/4) / 2 = 0.75 as a mean over graphs (over pairs it
    # would be 3/5).
    x = torch.tensor([[1., 0.], [1., 0.],
                      [1., 0.], [0., 1.], [2., 0.], [3., 0.], [4., 0.]])
    batch = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    edge_label_index = torch.tensor([[0, 2, 3, 4, 5], [1, 6, 2, 3, 6]])
    edge_label = torch.ones(5, dtype=torch.long)
    out = mrr(x, edge_label_index, edge_label, batch, hits=(1, 2, 4, 5))
    assert out['hits@1_filtered'] == pytest.approx((1 + 2 / 4) / 2)
    assert out['hits@2_filtered'] == pytest.approx((1 + 3 / 4) / 2)
    assert out['hits@4_filtered'] == pytest.approx((1 + 3 / 4) / 2)
    assert out['hits@5_filtered'] == pytest.approx(1.0)
    assert out['mrr_filtered'] == pytest.approx(
        (1 + (1 + 1 / 2 + 1 / 5 + 1) / 4) / 2)
    ref = _brute_force_hits(x, edge_label_index, edge_label, batch,
                            (1, 2, 4, 5))
    for key, value in ref.items():
        assert out[key] == pytest.approx(value), key


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('ks', [(1, 3, 10), (5, ), (2, 30)])
def test_hits_match_brute_force(seed, ks):
    # Graphs large enough for ranks beyond 10.
    x, edge_label_index, edge_label, batch = _random_graphs(
        seed, sizes=[23, 9, 17, 4, 30], pairs_per_graph=12)
    out = mrr(x, edge_label_index, edge_label, batch, hits=ks)
    ref = _brute_force_hits(x, edge_label_index, edge_label, batch, ks)
    assert list(out) == MRR_KEYS + list(ref)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    # The MRR entries do not change with the Hits@k requested.
    assert {k: out[k] for k in MRR_KEYS} == mrr(x, edge_label_index,
                                                edge_label, batch)


def test_hits_bounds_and_monotone():
    x, edge_label_index, edge_label, batch = _random_graphs(
        7, sizes=[25, 18, 12], pairs_per_graph=15)
    out = mrr(x, edge_label_index, edge_label, batch,
              hits=(1, 3, 10, 1000))
    assert (out['hits@1_filtered'] <= out['hits@3_filtered']
            <= out['hits@10_filtered'] <= out['hits@1000_filtered'])
    # k beyond every graph's size: 1 for each graph with contacts, 0 for the
    # one without (graph 1).
    assert out['hits@1000_filtered'] == pytest.approx(2 / 3)
    # Hits@1 never exceeds the filtered MRR, which never exceeds Hits@inf.
    assert out['hits@1_filtered'] <= out['mrr_filtered']


def test_mrr_keys_unchanged_without_hits():
    x, edge_label_index, edge_label, batch = _random_graphs(
        1, sizes=[6, 5], pairs_per_graph=4)
    assert list(mrr(x, edge_label_index, edge_label, batch)) == MRR_KEYS
    none = mrr(x, edge_label_index[:, :0], edge_label[:0], batch,
               hits=(1, 3, 10))
    assert none == {**dict.fromkeys(MRR_KEYS, 0.0),
                    'hits@1_filtered': 0.0, 'hits@3_filtered': 0.0,
                    'hits@10_filtered': 0.0}


@pytest.mark.parametrize('hits', [10, (0, ), (1, 2.5), (True, ), '13',
                                  (-3, )])
def test_hits_bad_input(hits):
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="'hits' to be a sequence of "
                       "integers >= 1"):
        mrr(x, torch.tensor([[0], [1]]), torch.tensor([1]), hits=hits)
