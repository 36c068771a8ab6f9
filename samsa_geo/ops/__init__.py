r"""Geometry ops: farthest point sampling, nearest neighbours, radius search
and scatter reductions, in pure PyTorch with optional compiled backends
(:obj:`torch_cluster`, :obj:`torch_scatter`) that are used when installed.

Every function takes a keyword :obj:`backend` (:obj:`"auto"`,
:obj:`"compiled"`, :obj:`"torch"`) to force one implementation.
"""
from samsa_geo.ops.fps import fps
from samsa_geo.ops.knn import knn, knn_graph
from samsa_geo.ops.radius import radius, radius_graph
from samsa_geo.ops.scatter import scatter, segment_softmax

__all__ = [
    'fps',
    'knn',
    'knn_graph',
    'radius',
    'radius_graph',
    'scatter',
    'segment_softmax',
]
