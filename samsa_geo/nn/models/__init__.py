from .samsa_point_classifier import SamsaPointClassifier
from .samsa_point_segmenter import SamsaPointSegmenter
from .samsa_graph_model import SamsaGraphModel

__all__ = [
    'SamsaPointClassifier',
    'SamsaPointSegmenter',
    'SamsaGraphModel',
]
