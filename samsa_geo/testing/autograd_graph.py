import collections
from typing import Dict

from torch import Tensor


def autograd_node_kinds(out: Tensor) -> Dict[str, int]:
    r"""The nodes of the autograd graph behind ``out``, counted by kind
    (class name, e.g. ``"AddmmBackward0"``; the ``AccumulateGrad`` nodes
    of the leaves included): what a backward pass from ``out`` runs.

    Args:
        out (Tensor): A tensor with a ``grad_fn``.
    """
    if out.grad_fn is None:
        raise ValueError("Expected 'out' to have a grad_fn (it records no "
                         "autograd graph)")
    seen, stack = set(), [out.grad_fn]
    kinds: collections.Counter = collections.Counter()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kinds[type(node).__name__] += 1
        stack.extend(fn for fn, _ in node.next_functions)
    return kinds
