from .samsa_point_classifier import SamsaPointClassifier
from .samsa_point_segmenter import SamsaPointSegmenter

__all__: list = [
    'SamsaPointClassifier',
    'SamsaPointSegmenter',
]
