from .add_laplacian_pe import AddLaplacianPE
from .add_random_walk_pe import AddRandomWalkPE
from .random_sign_flip import RandomSignFlip
from .standardize_features import StandardizeFeatures

__all__: list = [
    'AddLaplacianPE',
    'AddRandomWalkPE',
    'RandomSignFlip',
    'StandardizeFeatures',
]
