import pytest
import torch

from samsa_geo.testing import autograd_node_kinds


def test_nodes_are_counted_by_kind_once_each():
    # y = relu(a @ w) + a: one matmul, one relu, one add, two leaves; a
    # reached twice counts once.
    a = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    y = torch.relu(a @ w) + a
    kinds = autograd_node_kinds(y)
    assert kinds == {'AddBackward0': 1, 'ReluBackward0': 1,
                     'MmBackward0': 1, 'AccumulateGrad': 2}


def test_a_tensor_without_graph_is_refused():
    with pytest.raises(ValueError, match="'out'"):
        autograd_node_kinds(torch.randn(3))
