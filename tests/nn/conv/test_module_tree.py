import copy
import pickle

import pytest
import torch

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention._module_tree import SETTING_TYPES, ModuleTree


def walked_settings(modules):
    # The settings as a fresh walk of every module's attributes reads them.
    return [(name, v) for m in modules for name, v in vars(m).items()
            if type(v) in SETTING_TYPES
            or (v is None and not name.startswith('_'))]


def test_the_tree_holds_every_submodule_parameter_and_buffer():
    conv = SamsaConv(16, None, heads=2, k=4)
    tree = ModuleTree().read(conv)
    assert tree.modules[0] is conv
    assert {id(m) for m in tree.modules} == {id(m) for m in conv.modules()}
    assert len(tree.modules) == len(list(conv.modules()))
    assert {id(p) for p in tree.params()} == \
        {id(p) for p in conv.parameters()}
    assert {id(b) for b in tree.buffers()} == {id(b) for b in conv.buffers()}
    # The settings are every scalar attribute (each module's names in
    # order, its first name once more).
    flat = [v for values in tree.settings() for v in values[:-1]]
    assert flat == [v for _, v in walked_settings(tree.modules)]


def test_a_new_setting_value_is_a_new_key():
    conv = SamsaConv(16, None, heads=2, k=4, dropout=0.1)
    tree = ModuleTree()
    before = tree.read(conv).settings()
    # What a graph bakes in: a new temperature, dropout rate, k or eps,
    # the mode, an optional setting given a value.
    for module, name, value in [(conv.attn, 'tau', 0.25),
                                (conv.mlp[2], 'p', 0.3),
                                (conv.attn, 'k', 8),
                                (conv.norm2.module, 'eps', 1e-3),
                                (conv.mlp[0], 'training', False),
                                (conv.attn, 'padded', True)]:
        old = getattr(module, name)
        setattr(module, name, value)
        assert tree.read(conv).settings() != before, name
        setattr(module, name, old)
        assert tree.read(conv).settings() == before, name


def test_a_new_attribute_or_submodule_is_walked():
    conv = SamsaConv(16, None, heads=2, k=4)
    tree = ModuleTree()
    before = tree.read(conv).settings()
    conv.attn.extra = 3  # a new setting
    assert tree.read(conv).settings() != before
    del conv.attn.extra
    assert tree.read(conv).settings() == before
    lin = torch.nn.Linear(16, 16)
    conv.mlp[0] = lin  # a replaced child: its parameters are read
    tree.read(conv)
    assert lin in tree.modules
    assert any(p is lin.weight for p in tree.params())
    conv.conv = torch.nn.Identity()  # None -> a submodule
    assert any(m is conv.conv for m in tree.read(conv).modules)


def test_replaced_parameters_and_buffers_are_read_at_once():
    conv = SamsaConv(16, None, heads=2, k=4)
    tree = ModuleTree().read(conv)
    weight = torch.nn.Parameter(torch.randn(32, 16))
    conv.mlp[0].weight = weight
    assert any(p is weight for p in tree.read(conv).params())
    mean = torch.zeros(16)
    conv.norm2.module.running_mean = mean
    assert any(b is mean for b in tree.read(conv).buffers())


def test_a_setting_that_turns_into_a_tensor_leaves_the_key():
    # The key is compared with ==: a tensor in it would be compared by
    # value (an error, or a device synchronisation).
    conv = SamsaConv(16, None, heads=2, k=4)
    tree = ModuleTree()
    tree.read(conv).settings()
    conv.attn.tau = torch.ones(1)
    settings = tree.read(conv).settings()
    assert not any(isinstance(v, torch.Tensor)
                   for values in settings for v in values)
    assert all(type(v) in SETTING_TYPES or v is None
               for values in settings for v in values)


def test_hooks_inside_the_layer_are_seen_its_own_are_not():
    conv = SamsaConv(16, None, heads=2, k=4)
    tree = ModuleTree()
    assert not tree.read(conv).hooked()
    handle = conv.register_forward_hook(lambda *args: None)
    assert not tree.read(conv).hooked()
    handle.remove()
    handle = conv.mlp[0].register_full_backward_hook(lambda *args: None)
    assert tree.read(conv).hooked()
    handle.remove()
    assert not tree.read(conv).hooked()
    handle = conv.attn.register_forward_pre_hook(lambda *args: None)
    assert tree.read(conv).hooked()
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda *args: None)
    assert tree.read(conv).hooked()
    handle.remove()


@pytest.mark.parametrize('clone', [copy.deepcopy,
                                   lambda m: pickle.loads(pickle.dumps(m))])
def test_a_copy_walks_its_own_modules(clone):
    conv = SamsaConv(16, None, heads=2, k=4)
    conv._module_tree.read(conv)
    other = clone(conv)
    assert other._module_tree.modules == []
    tree = other._module_tree.read(other)
    assert tree.modules[0] is other
    assert not {id(m) for m in tree.modules} & \
        {id(m) for m in conv.modules()}
    assert {id(p) for p in tree.params()} == \
        {id(p) for p in other.parameters()}
