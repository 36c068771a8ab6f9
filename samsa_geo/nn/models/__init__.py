from .samsa_graph_model import PRESETS, SamsaGraphModel

__all__: list = [
    'SamsaGraphModel',
    'PRESETS',
]
