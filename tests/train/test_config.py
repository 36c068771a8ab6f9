import argparse

import pytest
import yaml

from samsa_geo.train import (
    RESUME_MAY_CHANGE,
    add_run_args,
    check_resume_config,
    load_config,
    make_parser,
    parse_args_with_config,
    save_config,
)


def parser():
    p = make_parser('A test command. On two\nlines.\n\n    python x.py\n')
    p.add_argument('--dataset', required=True, choices=['a', 'b'],
                   help='dataset')
    p.add_argument('--num-points', type=int, default=1024, help='points')
    p.add_argument('--lr', type=float, default=1e-3, help='learning rate')
    p.add_argument('--amp', default=None, choices=['bf16', 'fp16'],
                   help='precision')
    p.add_argument('--normals', action='store_true', help='normals')
    p.add_argument('--split', type=int, nargs=2, default=(12, 4),
                   help='split')
    return p


def write(tmp_path, text, name='c.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_file_sets_defaults_and_flags_override(tmp_path):
    path = write(tmp_path, 'dataset: b\nnum-points: 512\n--lr: 0.01\n'
                 'normals: true\nsplit: [3, 1]\n')
    args = parse_args_with_config(parser(), ['--config', path])
    assert (args.dataset, args.num_points, args.lr, args.normals,
            args.split) == ('b', 512, 0.01, True, [3, 1])
    assert args.amp is None and args.config == path
    args = parse_args_with_config(parser(), ['--config', path,
                                             '--num-points', '64',
                                             '--dataset', 'a'])
    assert (args.num_points, args.dataset, args.lr) == (64, 'a', 0.01)
    # Without a file: defaults, and required options stay required.
    args = parse_args_with_config(parser(), ['--dataset', 'a'])
    assert args.num_points == 1024 and args.config is None
    with pytest.raises(SystemExit):
        parse_args_with_config(parser(), [])


def test_resolved_config_round_trip(tmp_path):
    path = write(tmp_path, 'dataset: b\nnum_points: 256\n')
    args = parse_args_with_config(parser(), ['--config', path, '--amp',
                                             'bf16'])
    saved = save_config(args, tmp_path / 'run')
    assert saved == str(tmp_path / 'run' / 'config.yaml')
    with open(saved) as f:
        text = yaml.safe_load(f)
    assert text == {'dataset': 'b', 'num-points': 256, 'lr': 1e-3,
                    'amp': 'bf16', 'normals': False, 'split': [12, 4]}
    again = parse_args_with_config(parser(), ['--config', saved])
    assert vars(again) == {**vars(args), 'config': saved, 'split': [12, 4]}


@pytest.mark.parametrize('text,match', [
    ('dataset: c\n', r"'dataset'.*one of \['a', 'b'\] \(got 'c'\)"),
    ('num-points: 0.5\n', "'num_points'.*--num-points value"),
    ('normals: 1\n', "'normals'.*true or false"),
    ('num_pionts: 5\n', r"unknown options \['num_pionts'\]"),
    ('- a\n- b\n', 'mapping of flag names'),
    ('dataset: [a\n', 'not valid YAML'),
])
def test_bad_config(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        parse_args_with_config(parser(), ['--config', path])


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_config(tmp_path / 'missing.yaml')
    assert load_config(write(tmp_path, '')) == {}


def test_make_parser_description_and_defaults():
    p = parser()
    assert p.description == 'A test command. On two lines.'
    assert p.epilog.strip() == 'python x.py'
    text = p.format_help()
    assert 'points (default: 1024)' in text
    assert isinstance(p, argparse.ArgumentParser)


def test_resume_config_compares_values_as_recorded(tmp_path):
    # What config.yaml writes equals what it was written from: a tuple and
    # its list, 1 and 1.0 (--lr 1 from a file), NaN and NaN.
    args = argparse.Namespace(split=(12, 4), lr=1, margin=float('nan'),
                              normals=True, root=None, config='c.yaml')
    save_config(args, tmp_path)
    check_resume_config(argparse.Namespace(
        split=[12, 4], lr=1.0, margin=float('nan'), normals=True, root=None,
        config=None), tmp_path)
    check_resume_config({'split': [12, 4], 'lr': 1.0, 'margin': float('nan'),
                         'normals': True, 'root': None}, tmp_path)
    # True is not 1; None is not ''.
    with pytest.raises(ValueError, match=r"--normals True there \(got 1\); "
                       r"--root None there \(got ''\)"):
        check_resume_config({**vars(args), 'normals': 1, 'root': ''},
                            tmp_path)


def test_resume_config_may_change(tmp_path):
    save_config({'epochs': 10, 'device': 'cuda', 'num_points': 512},
                tmp_path)
    assert {'epochs', 'device', 'resume'} <= RESUME_MAY_CHANGE
    assert 'num_points' not in RESUME_MAY_CHANGE
    check_resume_config({'epochs': 20, 'device': 'cpu', 'num_points': 512},
                        tmp_path)
    check_resume_config({'epochs': 10, 'device': 'cuda', 'num_points': 256},
                        tmp_path, may_change=['num-points'])
    with pytest.raises(ValueError, match=r"--epochs 10 there \(got 20\)"
                       r".* may change only --num-points\."):
        check_resume_config({'epochs': 20, 'device': 'cuda',
                             'num_points': 256}, tmp_path,
                            may_change=['num_points'])


def test_resume_config_that_is_not_a_mapping(tmp_path):
    write(tmp_path, '- a\n- b\n', name='config.yaml')
    with pytest.raises(ValueError, match='mapping of flag names'):
        check_resume_config({'epochs': 1}, tmp_path)


@pytest.mark.parametrize('seeds', [True, False])
def test_add_run_args_seeds_must_not_be_a_bool(seeds):
    # seeds=True gave a default of one run, seeds=False an error only once
    # the flags were parsed.
    with pytest.raises(TypeError) as info:
        add_run_args(argparse.ArgumentParser(), seeds=seeds)
    assert str(info.value) == "Expected 'seeds' to be an int (got bool)"
