r"""See what the attention sampled: hooks that record the sampled token
indices of every :class:`~samsa_geo.nn.SamsaAttention`, point-cloud panels
(Open3D, matplotlib fallback), coloured PLY files, graph views, training
curves and confusion matrices. Nothing here imports :mod:`samsa_geo.nn` at import time."""
from samsa_geo.visualization.sampling_recorder import (
    SamplingRecord,
    SamplingRecorder,
    record_sampling,
)
from samsa_geo.visualization.colors import head_colors
from samsa_geo.visualization.ply import read_ply_colors, write_sampling_ply
from samsa_geo.visualization.points import (
    plot_sampled_points,
    show_sampled_points,
)
from samsa_geo.visualization.selection import select_graph
from samsa_geo.visualization.graphs import (
    plot_sampled_graph,
    sampling_counts,
    spring_layout,
)
from samsa_geo.visualization.curves import plot_training_curves, read_log
from samsa_geo.visualization.confusion import plot_confusion_matrix
from samsa_geo.visualization.visualize_sampling import visualize_sampling

__all__ = [
    'SamplingRecorder',
    'SamplingRecord',
    'record_sampling',
    'plot_sampled_points',
    'write_sampling_ply',
    'read_ply_colors',
    'show_sampled_points',
    'head_colors',
    'select_graph',
    'plot_sampled_graph',
    'sampling_counts',
    'spring_layout',
    'plot_training_curves',
    'read_log',
    'plot_confusion_matrix',
    'visualize_sampling',
]
