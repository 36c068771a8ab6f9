r"""Geometry ops: farthest point sampling, nearest neighbours, radius search
and scatter reductions, in pure PyTorch with optional compiled backends
(:obj:`torch_cluster`, :obj:`torch_scatter`) that are used when installed,
and samsa_geo's Triton kernels on CUDA; :func:`layer_norm`, the layer
normalisation of many narrow rows that the point encoders run; and
:func:`residual_affine`, a residual sum and per-channel affine map in one
pass (a residual block's evaluation batch norm); and
:func:`residual_batch_norm`, a residual sum and a training batch norm with
its backward pass, in a few passes; :func:`linear`, a linear layer
whose bias gradient is summed by a Triton kernel; and
:func:`gine_aggregate`, the aggregation of GIN / GINE message passing.

Every function takes a keyword :obj:`backend` (:obj:`"auto"`,
:obj:`"compiled"` where an extension serves the op, :obj:`"triton"` for
fps, knn, layer_norm, linear, residual_affine, residual_batch_norm and
gine_aggregate,
:obj:`"torch"`) to force one implementation. What :obj:`"auto"` means,
and whether the ops check the values of their inputs (finite points,
sorted batch vectors), is set in :mod:`samsa_geo.ops.config`
(:func:`use_backend`, :func:`value_checks`).
"""
from samsa_geo.ops.fps import fps
from samsa_geo.ops.gine_aggregate import gine_aggregate
from samsa_geo.ops.knn import knn, knn_graph, knn_neighbours
from samsa_geo.ops.layer_norm import layer_norm
from samsa_geo.ops.linear import linear
from samsa_geo.ops.radius import radius, radius_graph
from samsa_geo.ops.residual_affine import residual_affine
from samsa_geo.ops.residual_batch_norm import residual_batch_norm
from samsa_geo.ops.scatter import scatter, segment_softmax
from samsa_geo.ops.config import (
    default_backend,
    set_default_backend,
    set_value_checks,
    use_backend,
    value_checks,
    value_checks_enabled,
)
from samsa_geo.ops.validation import check_finite, check_sorted_batch

__all__ = [
    'fps',
    'gine_aggregate',
    'knn',
    'knn_graph',
    'knn_neighbours',
    'layer_norm',
    'linear',
    'radius',
    'radius_graph',
    'residual_affine',
    'residual_batch_norm',
    'scatter',
    'segment_softmax',
    'check_finite',
    'check_sorted_batch',
    'default_backend',
    'set_default_backend',
    'use_backend',
    'set_value_checks',
    'value_checks',
    'value_checks_enabled',
]
