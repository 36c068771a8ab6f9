"""Pure-PyTorch implementations of the geometry ops, one module per
algorithm.

The public functions in :mod:`samsa_geo.ops` validate their input and
dispatch either to a compiled backend (:obj:`torch_cluster`,
:obj:`torch_scatter`, samsa_geo's Triton kernels) or to the functions
here, which reproduce the extensions' semantics and output layout:

- :mod:`.fps`: farthest point sampling on a padded distance matrix;
- :mod:`.knn`: the kNN dispatch over the padded (:mod:`.knn_padded`), span
  (:mod:`.knn_span`) and spatial-grid (:mod:`.knn_grid`) strategies;
- :mod:`.radius`: radius search over query chunks;
- :mod:`.scatter`: scatter reductions;
- :mod:`.blocks`: the distance blocks and chunking they share.
"""
from samsa_geo.ops._fallback.fps import fps
from samsa_geo.ops._fallback.knn import knn
from samsa_geo.ops._fallback.radius import radius
from samsa_geo.ops._fallback.scatter import scatter

__all__ = ['fps', 'knn', 'radius', 'scatter']
