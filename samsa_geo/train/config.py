r"""YAML run configurations for command-line examples: a file sets the
defaults of an :class:`argparse.ArgumentParser`, flags on the command line
override it, and the resolved configuration is saved in the run folder."""
import argparse
import math
import os
import textwrap
import os.path as osp
import warnings
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import yaml

from samsa_geo.ops.validation import check_positive_int
from samsa_geo.train.checkpoint import atomic_write

#: The file name of the resolved configuration in a run folder.
CONFIG_FILE = 'config.yaml'
#: The file name of the options of an evaluation that keeps the folder's
#: run (of its own checkpoint, say), beside the run's :obj:`config.yaml`
#: (see :meth:`~samsa_geo.train.Trainer.start_evaluation`).
EVAL_CONFIG_FILE = 'eval_config.yaml'

#: Options that a resume may change (see :func:`check_resume_config`), by
#: attribute name: the length of the run (:obj:`epochs`; :obj:`seeds`, the
#: number of runs), where and how it computes (:obj:`device`,
#: :obj:`compile`, :obj:`deterministic`, :obj:`num_workers`,
#: :obj:`threads`), what it prints (:obj:`no_progress`), where it is written
#: (:obj:`out`), and the flags that say what to do with the run folder
#: (:obj:`resume`, :obj:`overwrite`, :obj:`eval_checkpoint`); :obj:`config`,
#: the file the options came from, is not recorded. Every other option
#: decides the data, its split, sampling or augmentation, the model, the
#: schedule or the evaluation of the run.
RESUME_MAY_CHANGE = frozenset({
    'epochs', 'seeds', 'device', 'compile', 'deterministic', 'num_workers',
    'threads', 'no_progress', 'out', 'resume', 'overwrite', 'eval_checkpoint',
})


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    pass


def make_parser(doc: str) -> argparse.ArgumentParser:
    r"""The parser of a command-line example: the first paragraph of
    :obj:`doc` (the script's docstring) as description, the rest as epilog
    shown as written, and every option's default in :obj:`--help`.

    Args:
        doc (str): The script's docstring.
    """
    head, _, rest = doc.strip().partition('\n\n')
    description = textwrap.fill(' '.join(head.split()), 79,
                                break_on_hyphens=False)
    return argparse.ArgumentParser(description=description,
                                   epilog=rest or None,
                                   formatter_class=_HelpFormatter)


def add_run_args(parser: argparse.ArgumentParser,
                 seeds: Optional[int] = None) -> None:
    r"""Adds the run flags every training example takes, with one meaning
    each: :obj:`--seed` (the seed of a run), :obj:`--seeds` (only where
    :obj:`seeds` is given: that many runs, with seeds :obj:`--seed`,
    :obj:`--seed + 1`, ...), :obj:`--amp`, :obj:`--compile`,
    :obj:`--deterministic`, :obj:`--resume`, :obj:`--overwrite` and
    :obj:`--no-progress`, the
    :class:`~samsa_geo.train.Trainer` arguments of the same names.

    Args:
        parser (argparse.ArgumentParser): The example's parser.
        seeds (int, optional): Default number of seeds; :obj:`None` for
            examples that train one run. (default: :obj:`None`)
    """
    if seeds is not None:
        check_positive_int('seeds', seeds)
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the run (initialisation, shuffling, '
                        'augmentation)' if seeds is None else
                        'seed of the first run')
    if seeds is not None:
        parser.add_argument('--seeds', type=int, default=seeds,
                            help='number of runs, with seeds --seed, '
                            '--seed + 1, ...')
    parser.add_argument('--amp', default=None, choices=['bf16', 'fp16'],
                        help='mixed precision; unset: float32')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the model')
    parser.add_argument('--deterministic', action='store_true',
                        help='bit-reproducible runs (slower)')
    parser.add_argument('--resume', action='store_true',
                        help="continue from the run folder's last.pt, "
                        "with the options its config.yaml records (only "
                        "--epochs, --device and how the run is shown and "
                        "computed may differ)")
    parser.add_argument('--overwrite', action='store_true',
                        help='delete the run already in the run folder '
                        'instead of moving it aside to <out>.old-<time>')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bars (summary lines only)')


def load_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    r"""Reads a YAML mapping of flag names to values. Keys may be written
    like the flags (:obj:`num-points`, :obj:`--num-points`) or like their
    attributes (:obj:`num_points`); they are returned as attributes.

    Args:
        path (str): The YAML file.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f"Config file '{path}' does not exist")
    with open(path) as f:
        try:
            values = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"Config file '{path}' is not valid YAML: "
                             f"{e}") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"Expected config file '{path}' to hold a mapping "
                         f"of flag names to values (got a "
                         f"{type(values).__name__})")
    return {str(key).lstrip('-').replace('-', '_'): value
            for key, value in values.items()}


def _check(parser: argparse.ArgumentParser, values: Dict[str, Any],
           path: str) -> None:
    actions = {a.dest: a for a in parser._actions
               if a.dest not in (argparse.SUPPRESS, 'help', 'config')}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"Config file '{path}' sets unknown options "
                         f"{unknown}; known: {sorted(actions)}")
    for dest, value in values.items():
        action = actions[dest]
        flag = action.option_strings[-1] if action.option_strings else dest
        if isinstance(action, (argparse._StoreTrueAction,
                               argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ValueError(f"Expected '{dest}' in '{path}' to be true "
                                 f"or false, like the flag {flag} (got "
                                 f"{value!r})")
            continue
        if action.nargs not in (None, '?') and value is not None:
            items = value if isinstance(value, list) else [value]
        else:
            items = [value]
        for item in items:
            if item is None:
                continue
            if action.type is not None and not isinstance(item, str):
                try:
                    converted = action.type(str(item))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"Expected '{dest}' in '{path}' to be "
                                     f"a valid {flag} value (got "
                                     f"{item!r})") from e
                if converted != item:
                    raise ValueError(f"Expected '{dest}' in '{path}' to be "
                                     f"a valid {flag} value (got {item!r})")
            if action.choices is not None and item not in action.choices:
                raise ValueError(f"Expected '{dest}' in '{path}' to be one "
                                 f"of {list(action.choices)} (got {item!r})")


def parse_args_with_config(parser: argparse.ArgumentParser,
                           argv: Optional[Sequence[str]] = None,
                           ) -> argparse.Namespace:
    r"""Adds :obj:`--config FILE.yaml` to :obj:`parser` and parses
    :obj:`argv`: the file's values replace the parser's defaults and flags
    given on the command line override the file. Values are checked like
    flags (known names, types, choices); an option the parser requires may
    come from the file. :obj:`--seeds`, :obj:`--epochs` and
    :obj:`--batch-size`, where the parser has them, must be at least 1
    (a usage error naming the flag). The result's :obj:`config` names the
    file.

    Args:
        parser (argparse.ArgumentParser): The example's parser.
        argv (List[str], optional): Arguments; :obj:`None` reads
            :obj:`sys.argv`. (default: :obj:`None`)
    """
    parser.add_argument('--config', default=None, metavar='FILE.yaml',
                        help='YAML file of option values (keys as the '
                        'flags, e.g. "num-points: 512"); flags given on the '
                        'command line override it')
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        values = load_config(known.config)
        _check(parser, values, known.config)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if getattr(args, 'seeds', 1) < 1:
        parser.error(f'argument --seeds: expected at least 1 seed '
                     f'(got {args.seeds})')
    # Counts that every example derives its schedule from: an error naming
    # the flag before any data is read (a batch size of 0 divided by zero).
    for dest in ('epochs', 'batch_size'):
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < 1:
            flag = '--' + dest.replace('_', '-')
            parser.error(f'argument {flag}: expected a positive int '
                         f'(got {value})')
    return args


def save_config(args: Union[argparse.Namespace, Dict[str, Any]],
                out_dir: Union[str, os.PathLike],
                filename: str = CONFIG_FILE) -> str:
    r"""Writes the resolved options (file, defaults and flags together) to
    :obj:`config.yaml` in the run folder, atomically; the file can be passed
    back as :obj:`--config` to repeat the run. Returns its path.

    Args:
        args (argparse.Namespace or dict): The parsed options.
        out_dir (str): The run folder.
        filename (str, optional): The file's name in :obj:`out_dir`.
            (default: :obj:`'config.yaml'`)
    """
    values = {key.replace('_', '-'): value
              for key, value in _recorded(args).items()}
    path = osp.join(os.fspath(out_dir), filename)
    with atomic_write(path) as f:
        yaml.safe_dump(values, f, sort_keys=True)
    return path


def check_resume_config(args: Union[argparse.Namespace, Dict[str, Any]],
                        out_dir: Union[str, os.PathLike],
                        may_change: Iterable[str] = RESUME_MAY_CHANGE,
                        ) -> None:
    r"""Compares the options of a resumed run with those of the run it
    continues, as :func:`save_config` recorded them in
    :obj:`out_dir/config.yaml`: a resume with another dataset root, number
    of points, split, model or schedule would continue the checkpoint on a
    different experiment and mix the two in one checkpoint and one log.
    Reads nothing else and writes nothing.

    Values are compared as :obj:`config.yaml` holds them (a tuple equals
    the list it is written as, :obj:`1` equals :obj:`1.0`). A run folder
    written without :obj:`config.yaml` (before runs recorded one, or by a
    :class:`~samsa_geo.train.Trainer` without :obj:`config`) is resumed
    with a :class:`UserWarning` that nothing was compared; options
    recorded on one side only (added or removed since the folder was
    written) are left out of the comparison with a :class:`UserWarning`
    naming them.

    Args:
        args (argparse.Namespace or dict): The resumed run's options.
        out_dir (str): The run folder.
        may_change (Iterable[str], optional): Options, by attribute name
            (:obj:`num_workers`), that may differ from the recorded ones.
            (default: :data:`RESUME_MAY_CHANGE`)

    Raises:
        ValueError: When options outside :obj:`may_change` differ from the
            recorded ones, naming each as its flag with both values; or
            when :obj:`config.yaml` is not a YAML mapping.
    """
    out_dir = os.fspath(out_dir)
    path = osp.join(out_dir, CONFIG_FILE)
    if not osp.isfile(path):
        warnings.warn(f"Resuming the run in '{out_dir}' without comparing "
                      f"its options: it has no '{CONFIG_FILE}' (written "
                      f"before runs recorded their options, or without "
                      f"them); the resumed run's options are recorded from "
                      f"now on", stacklevel=2)
        return
    saved = load_config(path)
    given = {_name(key): value for key, value in
             yaml.safe_load(yaml.safe_dump(_recorded(args))).items()}
    may_change = {_name(key) for key in may_change}
    unrecorded = sorted(set(given) - set(saved) - may_change)
    gone = sorted(set(saved) - set(given) - may_change)
    if unrecorded or gone:
        parts = ([f"not recorded there: {_flags(unrecorded)}"] if unrecorded
                 else []) + ([f"not given now: {_flags(gone)}"] if gone
                             else [])
        warnings.warn(f"Resuming the run in '{out_dir}' without comparing "
                      f"the options that '{path}' and the resumed run do "
                      f"not both record ({'; '.join(parts)})", stacklevel=2)
    changed = [key for key in sorted(set(saved) & set(given) - may_change)
               if not _same(saved[key], given[key])]
    if changed:
        diffs = '; '.join(f'{_flag(key)} {saved[key]!r} there (got '
                          f'{given[key]!r})' for key in changed)
        raise ValueError(
            f"Expected the options of the run in '{out_dir}' that resume "
            f"continues, as '{path}' records them: {diffs}. They decide "
            f"the run's data, model, schedule or evaluation, and the "
            f"continued run would mix two experiments in one checkpoint "
            f"and one log; a resume may change only "
            f"{_flags(sorted(may_change))}. Resume with the recorded "
            f"options (e.g. --config {path} --resume), or start a new run "
            f"without resume")


def _recorded(args: Union[argparse.Namespace, Dict[str, Any]],
              ) -> Dict[str, Any]:
    # The options config.yaml records: YAML-safe, without --config.
    values = dict(vars(args) if isinstance(args, argparse.Namespace)
                  else args)
    values.pop('config', None)
    return {str(key): _plain(value) for key, value in values.items()}


def _name(key: str) -> str:
    return str(key).lstrip('-').replace('-', '_')


def _flag(name: str) -> str:
    return '--' + name.replace('_', '-')


def _flags(names: Sequence[str]) -> str:
    return ', '.join(_flag(name) for name in names)


def _same(saved: Any, given: Any) -> bool:
    # Equal as config.yaml holds them: 1 and 1.0 alike, NaN equal to NaN,
    # True not 1.
    if isinstance(saved, list) and isinstance(given, list):
        return len(saved) == len(given) and all(
            _same(a, b) for a, b in zip(saved, given))
    if isinstance(saved, dict) and isinstance(given, dict):
        return saved.keys() == given.keys() and all(
            _same(saved[key], given[key]) for key in saved)
    if _is_number(saved) and _is_number(given):
        return saved == given or (math.isnan(saved) and math.isnan(given))
    return type(saved) is type(given) and saved == given


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    # YAML-safe values: tuples as lists, anything else unknown as text.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
