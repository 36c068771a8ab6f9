import argparse
import glob
import importlib.util
import os.path as osp
import sys

import pytest

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
NAMES = ['modelnet40', 'shapenet_part', 'lrgb', 'molecules',
         'rotation_protocol', 'visualize_sampling']
# Flags every training example takes, with one meaning each.
COMMON = ['--epochs', '--lr', '--amp', '--compile', '--deterministic',
          '--device', '--seed', '--out', '--resume', '--no-progress',
          '--config']


def load(name):
    sys.path.insert(0, EXAMPLES)
    try:
        spec = importlib.util.spec_from_file_location(
            f'example_{name}', osp.join(EXAMPLES, f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # examples parse nothing on import
    finally:
        sys.path.remove(EXAMPLES)
    return module


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(name, monkeypatch):
    """The example's parser, caught when it parses (nothing runs)."""
    module = load(name)

    def catch(parser, *args, **kwargs):
        raise Parsed(parser)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', catch)
    with pytest.raises(Parsed) as info:
        if hasattr(module, 'parse_args'):
            module.parse_args([])
        else:
            module.main([])
    return info.value.parser


@pytest.mark.parametrize('name', NAMES)
def test_help(name, monkeypatch):
    parser = parser_of(name, monkeypatch)
    assert issubclass(parser.formatter_class,
                      argparse.ArgumentDefaultsHelpFormatter)
    # The description is the docstring's whole first paragraph.
    assert parser.description.endswith('.'), parser.description
    for action in parser._actions:
        if action.dest != 'help':
            assert action.help and len(action.help) > 8, action.dest
            assert '(default' not in action.help, action.dest  # added once
    flags = {s for a in parser._actions for s in a.option_strings}
    assert '--config' in flags
    if name != 'visualize_sampling':
        assert set(COMMON) <= flags, set(COMMON) - flags
    actions = {a.dest: a for a in parser._actions}
    if 'seed' in actions:  # the seed of one run (the first, with --seeds)
        assert actions['seed'].type is int and actions['seed'].default == 0
    if 'seeds' in actions:  # a count of runs starting at --seed
        assert actions['seeds'].type is int
        assert '--seed' in actions['seeds'].help


def test_rotation_protocol_takes_modelnet40_flags(monkeypatch):
    ours = parser_of('rotation_protocol', monkeypatch)
    theirs = parser_of('modelnet40', monkeypatch)
    flags = {a.dest for a in ours._actions}
    protocol = {'train_rotation', 'test_rotation', 'rotation_invariant',
                'eval_checkpoint'}
    assert flags == {a.dest for a in theirs._actions} - protocol
    assert ours.get_default('out') == 'runs/rotation_protocol'


CONFIGS = sorted(glob.glob(osp.join(EXAMPLES, 'configs', '*.yaml')))


def test_every_example_has_presets():
    names = {osp.basename(p).split('_')[0] for p in CONFIGS}
    assert names == {'modelnet40', 'shapenet', 'lrgb', 'molecules'}


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_shipped_configs_parse(path):
    from samsa_geo.train import load_config
    name = osp.basename(path).split('_')[0]
    module = load({'shapenet': 'shapenet_part'}.get(name, name))
    values = load_config(path)
    args = module.parse_args(['--config', path])
    for key, value in values.items():
        assert getattr(args, key) == value, key
    # Flags override the file.
    args = module.parse_args(['--config', path, '--epochs', '7'])
    assert args.epochs == 7
