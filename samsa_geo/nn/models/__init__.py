from .samsa_point_backbone import SamsaPointBackbone
from .samsa_point_classifier import SamsaPointClassifier
from .samsa_point_segmenter import SamsaPointSegmenter
from .samsa_graph_model import PRESETS, SamsaGraphModel

__all__ = [
    'SamsaPointBackbone',
    'SamsaPointClassifier',
    'SamsaPointSegmenter',
    'SamsaGraphModel',
    'PRESETS',
]
