from .autograd_graph import autograd_node_kinds
from .crafted_payload import CraftedPayload
from .lrgb_fixtures import write_lrgb_raw
from .needle_task import NeedleModel, NeedleResult, needle_sets, train_needle
from .triton_compile import (
    compile_for_sm90,
    launched_kernels,
    recorded_launches,
)

__all__: list = [
    'autograd_node_kinds',
    'CraftedPayload',
    'write_lrgb_raw',
    'NeedleModel',
    'NeedleResult',
    'needle_sets',
    'train_needle',
    'compile_for_sm90',
    'launched_kernels',
    'recorded_launches',
]
