r"""What keeps run folders apart: a lock per folder naming its holder, the
choice between resuming, moving an old run aside or overwriting it (with
every file the run wrote there, the trainer's and its caller's), and the
removal of temporary files left by killed writers."""
import json
import os
import os.path as osp
import re
import shutil
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import (IO, Dict, Iterable, Iterator, List, Optional, Pattern,
                    Tuple, Union)

from samsa_geo.train.config import CONFIG_FILE, EVAL_CONFIG_FILE
from samsa_geo.train.distributed import barrier, get_rank

try:  # POSIX advisory locks; released by the kernel when the process dies.
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

#: The lock file inside a run folder.
LOCK_FILE = '.lock'

#: Files whose presence means that a folder holds a run.
RUN_FILES = ('last.pt', 'best.pt', 'log.csv', 'metrics.json')

#: What else belongs to a run: it moves (or is deleted) with the run files.
RUN_EXTRAS = (CONFIG_FILE, EVAL_CONFIG_FILE, 'tensorboard')

#: The files and folders a caller writes into a run folder besides the
#: trainer's: names, or compiled regular expressions that match whole names.
RunFiles = Iterable[Union[str, Pattern[str]]]

# Written by samsa_geo.train.checkpoint.atomic_write: '.{name}.{pid}.tmp'.
_TMP = re.compile(r'^\..+\.(\d+)\.tmp$')

# Locks this process holds: real path -> [open lock file, number of holders].
_HELD: Dict[str, list] = {}


class RunFolderError(RuntimeError):
    r"""Raised when a run folder cannot be used as asked: another process
    holds it, or resuming would lose the run it holds. The message names the
    folder, the holder or the file at stake, and what to do."""


class RunFolderLock:
    r"""An exclusive lock on a run folder, held from construction until
    :meth:`release` (or the end of the process, also on :obj:`kill -9`).

    The lock is an :func:`fcntl.flock` on :obj:`folder/.lock`, which also
    names the holder (process id, host, start time and command line), so
    that a second run in the same folder fails at once with a message naming
    the first. Several holders in one process share the lock (a script that
    trains, then evaluates, in one folder); it is released when the last one
    releases it.

    Args:
        folder (str): The run folder (created if needed).

    Raises:
        RunFolderError: If another process holds the lock.
    """
    def __init__(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.key = osp.realpath(folder)
        self.released = False
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return
        path = osp.join(folder, LOCK_FILE)
        f = open(path, 'a+')
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise RunFolderError(
                    f"Run folder '{folder}' is in use by another run "
                    f"({describe_holder(holder)}). Wait for that run to "
                    f"finish, stop it, or choose another output folder "
                    f"('out_dir', --out)") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({
            'pid': os.getpid(), 'host': socket.gethostname(),
            'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'command': ' '.join([sys.executable] + sys.argv)}) + '\n')
        f.flush()
        _HELD[self.key] = [f, 1]

    def release(self) -> None:
        r"""Gives the lock back (once; later calls do nothing)."""
        if self.released:
            return
        self.released = True
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.key]
            held[0].close()  # Closing the file drops the flock.

    def __enter__(self) -> 'RunFolderLock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.folder!r})'


def describe_holder(text: str) -> str:
    r"""Words for the holder recorded in a lock file."""
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']}, started "
                f"{info['started']}: {info['command']}")
    except (ValueError, KeyError, TypeError):
        return 'holder unknown: the lock file names none'


def remove_stale_temporaries(folder: str) -> List[str]:
    r"""Removes the temporary files :func:`atomic_write` left in
    :obj:`folder` when a writer was killed (:obj:`.{name}.{pid}.tmp` of any
    other process; call it while holding the folder's lock). Returns the
    removed paths."""
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        match = _TMP.match(name)
        path = osp.join(folder, name)
        if match and int(match.group(1)) != os.getpid() and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def check_run_files(
        run_files: RunFiles) -> Tuple[Union[str, Pattern[str]], ...]:
    r"""Returns :obj:`run_files` as a tuple after checking it.

    Args:
        run_files (iterable of str or re.Pattern): Names of files or folders
            directly inside a run folder, or compiled regular expressions
            that match whole names (:obj:`re.compile(r'seed\d+')`).

    Raises:
        TypeError: If :obj:`run_files` is a string or not iterable, or holds
            something else than names and compiled patterns.
        ValueError: If a name is empty, :obj:`'.'`, :obj:`'..'`,
            :obj:`'.lock'` or holds a path separator.
    """
    if isinstance(run_files, (str, bytes)) or not isinstance(run_files,
                                                              Iterable):
        raise TypeError(f"Expected 'run_files' to be a list of names or "
                        f"compiled patterns (got {type(run_files).__name__})")
    entries = tuple(run_files)
    for entry in entries:
        if isinstance(entry, re.Pattern) and isinstance(entry.pattern, str):
            continue
        if not isinstance(entry, str):
            raise TypeError(f"Expected every entry of 'run_files' to be a "
                            f"str or a compiled str pattern (got "
                            f"{type(entry).__name__})")
        if (entry in ('', '.', '..', LOCK_FILE) or '/' in entry
                or os.sep in entry):
            raise ValueError(f"Expected every entry of 'run_files' to name "
                             f"a file or folder directly inside the run "
                             f"folder (got {entry!r})")
    return entries


def run_entries(folder: str, run_files: RunFiles = ()) -> List[str]:
    r"""The names in :obj:`folder` of what belongs to a run: the trainer's
    files (:obj:`RUN_FILES`, :obj:`RUN_EXTRAS`), then those matching
    :obj:`run_files`, in that order (the matches of a pattern sorted), each
    once.

    Args:
        folder (str): The run folder (may not exist).
        run_files (iterable of str or re.Pattern, optional): The files and
            folders the caller writes into :obj:`folder`: names, or compiled
            regular expressions that match whole names. (default: :obj:`()`)
    """
    if not osp.isdir(folder):
        return []
    names = sorted(set(os.listdir(folder)) - {LOCK_FILE})
    found: List[str] = []
    for entry in RUN_FILES + RUN_EXTRAS + check_run_files(run_files):
        if isinstance(entry, str):
            matches = [entry] if entry in names else []
        else:
            matches = [n for n in names if entry.fullmatch(n)]
        found += [n for n in matches if n not in found]
    return found


def in_folder(path: str, folder: str) -> bool:
    r"""Whether the file :obj:`path` lies directly in :obj:`folder` (links
    resolved): a checkpoint of that run folder."""
    return osp.dirname(osp.realpath(path)) == osp.realpath(folder)


def continues_run(folder: str, resume: bool) -> bool:
    r"""Whether a run started with :obj:`resume` in :obj:`folder` continues
    the run there: :obj:`resume` is set and the folder holds
    :obj:`last.pt`."""
    return bool(resume) and osp.isfile(osp.join(folder, 'last.pt'))


def holds_run(folder: str, run_files: RunFiles = ()) -> bool:
    r"""Whether :obj:`folder` holds files of a run: one of :obj:`RUN_FILES`,
    or of :obj:`run_files` (what the caller writes there; its files alone,
    left by a run that never saved a checkpoint, are a run too).

    Args:
        folder (str): The run folder.
        run_files (iterable of str or re.Pattern, optional): See
            :func:`run_entries`. (default: :obj:`()`)
    """
    return any(name not in RUN_EXTRAS
               for name in run_entries(folder, run_files))


def _listing(folder: str, names: List[str]) -> str:
    # 'last.pt, best.pt, tensorboard/': folders end with a slash.
    return ', '.join(name + ('/' if osp.isdir(osp.join(folder, name))
                             and not osp.islink(osp.join(folder, name))
                             else '') for name in names)


def prepare_run_folder(folder: str, resume: bool = False,
                       overwrite: bool = False,
                       log: Optional[IO] = None,
                       run_files: RunFiles = ()) -> Optional[str]:
    r"""Makes :obj:`folder` ready for a run; call it while holding the
    folder's :class:`RunFolderLock`.

    - With :obj:`resume` and a :obj:`last.pt`, nothing moves: the run
      continues.
    - With :obj:`resume`, no :obj:`last.pt` but a :obj:`best.pt`, raises:
      starting from scratch would overwrite the best model.
    - Otherwise a folder that holds a run (:func:`holds_run`) is emptied for
      the new one. What belongs to the run is listed by :func:`run_entries`:
      the trainer's files (:obj:`RUN_FILES`, :obj:`config.yaml`,
      :obj:`tensorboard/`) and those of :obj:`run_files`. With
      :obj:`overwrite` they are deleted; without, they are moved to a new
      sibling folder :obj:`{folder}.old-{YYYYmmdd-HHMMSS}`, with every
      other file of the folder when it holds no subfolder but those of the
      run (a run folder, not a project folder given as output, whose other
      files and subfolders stay).

    The message saying which, and listing what was deleted or moved, is
    printed to :obj:`log` (standard error if :obj:`None`) and returned
    (:obj:`None` when nothing happened).

    Args:
        folder (str): The run folder.
        resume (bool, optional): Continue the run in :obj:`folder`.
            (default: :obj:`False`)
        overwrite (bool, optional): Delete the old run instead of moving it
            aside. (default: :obj:`False`)
        log (file, optional): Where the message goes. (default: :obj:`None`)
        run_files (iterable of str or re.Pattern, optional): The files and
            folders the caller writes into :obj:`folder` besides the
            trainer's (e.g. :obj:`'confusion_matrix.png'`, or the run
            folders of a multi-seed run, :obj:`re.compile(r'seed\d+')`).
            (default: :obj:`()`)

    Raises:
        RunFolderError: When resuming would lose :obj:`best.pt`.
        TypeError: If :obj:`run_files` is not a list of names and patterns.
        ValueError: If a name of :obj:`run_files` is no entry directly
            inside the folder (a path, :obj:`'.'`, :obj:`'..'`,
            :obj:`'.lock'`).
    """
    run_files = check_run_files(run_files)
    if continues_run(folder, resume):
        return None
    last, best = osp.join(folder, 'last.pt'), osp.join(folder, 'best.pt')
    if resume and osp.isfile(best):
        raise RunFolderError(
            f"Cannot resume in '{folder}': it holds 'best.pt' but no "
            f"'last.pt', and starting from scratch would overwrite "
            f"'best.pt'. To continue from the best epoch, copy '{best}' to "
            f"'{last}'; to start over, run without resume (the old run is "
            f"moved aside) or with overwrite (--overwrite)")
    if not holds_run(folder, run_files):
        return None
    ours = run_entries(folder, run_files)
    if overwrite:
        listing = _listing(folder, ours)
        for name in ours:
            path = osp.join(folder, name)
            if osp.isdir(path) and not osp.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        message = (f"Overwriting the previous run in '{folder}' "
                   f"(overwrite=True): deleted {listing}")
    else:
        base = f"{folder.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        target, count = base, 1
        while osp.exists(target):
            target, count = f'{base}-{count}', count + 1
        os.makedirs(target)
        entries = sorted(set(os.listdir(folder)) - {LOCK_FILE})
        # A folder with subfolders of its own (a project folder given as
        # output) keeps them and its other files: only the run's move.
        whole = all(name in ours or (osp.isfile(osp.join(folder, name))
                                     or osp.islink(osp.join(folder, name)))
                    for name in entries)
        entries = ours + [n for n in entries if n not in ours] if whole \
            else ours
        listing = _listing(folder, entries)
        for name in entries:
            shutil.move(osp.join(folder, name), osp.join(target, name))
        what = f"it to '{target}': {listing}" if whole else \
            f"its {listing} to '{target}'"
        message = (f"'{folder}' held a previous run: moved {what} (pass "
                   f"resume=True / --resume to continue it, or "
                   f"overwrite=True / --overwrite to replace it)")
    print(message, file=log if log is not None else sys.stderr, flush=True)
    return message


@contextmanager
def claim_run_folder(folder: str, resume: bool = False,
                     overwrite: bool = False, run_files: RunFiles = (),
                     log: Optional[IO] = None) -> Iterator[Optional[str]]:
    r"""Holds :obj:`folder` for a run made of several runs, each a
    :class:`~samsa_geo.train.Trainer` in a subfolder, next to files of its
    own: a summary over seeds, e.g. :obj:`<out>/<dataset>/` of
    :obj:`examples/lrgb.py` with :obj:`seed<k>/` and :obj:`metrics.json`.

    On rank 0 the context takes the folder's :class:`RunFolderLock`, held
    until it exits (a second such run in the folder fails at once), removes
    stale temporary files and, unless :obj:`resume` (every run inside then
    continues in its own folder), makes the folder ready for a new run with
    :func:`prepare_run_folder`: an old run moves aside (or, with
    :obj:`overwrite`, is deleted) whole, with the subfolders that
    :obj:`run_files` names, before any of the new runs starts. Those
    subfolders' own locks are taken for the move: one in use by a run of
    another process (a :class:`~samsa_geo.train.Trainer` started there
    alone) fails the claim, naming it, and nothing moves. Other ranks
    wait for it: under :obj:`torchrun`, enter it after
    :func:`~samsa_geo.train.init_distributed`.

    .. code-block:: python

        with claim_run_folder(out, args.resume, args.overwrite,
                              run_files=[re.compile(r'seed\d+')]):
            for seed in seeds:  # a Trainer in out/seed{seed} each
                ...
            write_summary(out)

    Args:
        folder (str): The folder of the whole run.
        resume (bool, optional): The runs inside continue; nothing moves.
            (default: :obj:`False`)
        overwrite (bool, optional): Delete an old run instead of moving it
            aside. (default: :obj:`False`)
        run_files (iterable of str or re.Pattern, optional): What the run
            writes into :obj:`folder` besides :obj:`metrics.json` and
            :obj:`config.yaml`: names, or compiled regular expressions that
            match whole names, of files and of the runs' subfolders.
            (default: :obj:`()`)
        log (file, optional): Where the message of
            :func:`prepare_run_folder` goes (standard error if :obj:`None`).
            (default: :obj:`None`)

    Yields:
        The message of :func:`prepare_run_folder` (:obj:`None` when nothing
        moved, and on other ranks).

    Raises:
        RunFolderError: If another process holds the folder, or a subfolder
            that would move.
        ValueError: If both :obj:`resume` and :obj:`overwrite` are set.
        TypeError: If :obj:`run_files` is not a list of names and patterns.
    """
    if resume and overwrite:
        raise ValueError("Expected at most one of 'resume' and "
                         "'overwrite' (got both)")
    run_files = check_run_files(run_files)
    folder = os.fspath(folder)
    lock, message = None, None
    try:
        if get_rank() == 0:
            lock = RunFolderLock(folder)
            remove_stale_temporaries(folder)
            if not resume:
                with sub_run_locks(folder, run_files):
                    message = prepare_run_folder(
                        folder, overwrite=overwrite, log=log,
                        run_files=run_files)
        barrier()
        yield message
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def sub_run_locks(folder: str, run_files: RunFiles = ()) -> Iterator[None]:
    r"""Holds, within the block, the :class:`RunFolderLock` of every
    subfolder of :obj:`folder` that belongs to its run (see
    :func:`run_entries`) and holds a lock file (a run folder of its own).

    Raises:
        RunFolderError: If another process holds one of them (the locks
            taken before it are released).
    """
    with ExitStack() as stack:
        for name in run_entries(folder, run_files):
            path = osp.join(folder, name)
            if (osp.isdir(path) and not osp.islink(path)
                    and osp.isfile(osp.join(path, LOCK_FILE))):
                stack.callback(RunFolderLock(path).release)
        yield


def drop_stale_evaluations(summary: Dict, checkpoint: str) -> Dict:
    r"""Removes from a :obj:`metrics.json` summary the splits that
    :meth:`Trainer.evaluate` evaluated with :obj:`checkpoint` (named in
    :obj:`summary['checkpoint']`), once that file has been replaced: the
    entry :obj:`summary[split]` and the keys :obj:`{split}_*`."""
    sources = summary.get('checkpoint', {})
    for split in [s for s, name in sources.items() if name == checkpoint]:
        summary.pop(split, None)
        for key in [k for k in summary if k.startswith(f'{split}_')]:
            del summary[key]
        del sources[split]
    return summary
