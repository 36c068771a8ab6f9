r"""What keeps run folders apart: a lock per folder naming its holder, the
choice between resuming, moving an old run aside or overwriting it, and the
removal of temporary files left by killed writers."""
import json
import os
import os.path as osp
import re
import shutil
import socket
import sys
import time
from typing import IO, Dict, List, Optional

try:  # POSIX advisory locks; released by the kernel when the process dies.
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

#: The lock file inside a run folder.
LOCK_FILE = '.lock'

#: Files whose presence means that a folder holds a run.
RUN_FILES = ('last.pt', 'best.pt', 'log.csv', 'metrics.json')

#: What else belongs to a run: it moves (or is deleted) with the run files.
RUN_EXTRAS = ('config.yaml', 'tensorboard')

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


def holds_run(folder: str) -> bool:
    r"""Whether :obj:`folder` holds files of a run (:obj:`RUN_FILES`)."""
    return any(osp.exists(osp.join(folder, name)) for name in RUN_FILES)


def prepare_run_folder(folder: str, resume: bool = False,
                       overwrite: bool = False,
                       log: Optional[IO] = None) -> Optional[str]:
    r"""Makes :obj:`folder` ready for a run; call it while holding the
    folder's :class:`RunFolderLock`.

    - With :obj:`resume` and a :obj:`last.pt`, nothing moves: the run
      continues.
    - With :obj:`resume`, no :obj:`last.pt` but a :obj:`best.pt`, raises:
      starting from scratch would overwrite the best model.
    - Otherwise a folder that holds a run (:obj:`RUN_FILES`) is emptied for
      the new one: with :obj:`overwrite` its run files (and
      :obj:`config.yaml`, :obj:`tensorboard/`) are deleted; without, they
      are moved to a new
      sibling folder :obj:`{folder}.old-{YYYYmmdd-HHMMSS}`, with every other
      file of the folder when it holds no subfolder of its own (a run
      folder, not a project folder given as output).

    The message saying which is printed to :obj:`log` (standard error if
    :obj:`None`) and returned (:obj:`None` when nothing happened).

    Raises:
        RunFolderError: When resuming would lose :obj:`best.pt`.
    """
    last, best = osp.join(folder, 'last.pt'), osp.join(folder, 'best.pt')
    if resume and osp.isfile(last):
        return None
    if resume and osp.isfile(best):
        raise RunFolderError(
            f"Cannot resume in '{folder}': it holds 'best.pt' but no "
            f"'last.pt', and starting from scratch would overwrite "
            f"'best.pt'. To continue from the best epoch, copy '{best}' to "
            f"'{last}'; to start over, run without resume (the old run is "
            f"moved aside) or with overwrite (--overwrite)")
    if not holds_run(folder):
        return None
    if overwrite:
        deleted = [name for name in RUN_FILES + RUN_EXTRAS
                   if osp.exists(osp.join(folder, name))]
        for name in deleted:
            path = osp.join(folder, name)
            if osp.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        message = (f"Overwriting the previous run in '{folder}' "
                   f"(overwrite=True): its {', '.join(deleted)} are deleted")
    else:
        base = f"{folder.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        target, count = base, 1
        while osp.exists(target):
            target, count = f'{base}-{count}', count + 1
        os.makedirs(target)
        entries = [name for name in os.listdir(folder) if name != LOCK_FILE]
        # A folder with subfolders of its own (a project folder given as
        # output) keeps them: only the trainer's files move.
        whole = all(osp.isfile(osp.join(folder, name)) or name == 'tensorboard'
                    for name in entries)
        if not whole:
            entries = [name for name in RUN_FILES + RUN_EXTRAS
                       if osp.exists(osp.join(folder, name))]
        for name in entries:
            shutil.move(osp.join(folder, name), osp.join(target, name))
        what = 'it' if whole else f"its {', '.join(entries)}"
        message = (f"'{folder}' held a previous run: moved {what} to "
                   f"'{target}' (pass resume=True / --resume to continue it, "
                   f"or overwrite=True / --overwrite to replace it)")
    print(message, file=log if log is not None else sys.stderr, flush=True)
    return message


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
