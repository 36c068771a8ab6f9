"""Timing and record helpers shared by the benchmark scripts."""
import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """The ``(B, n)`` cases of a ``--sizes``-style comma list of ``BxN``
    (sets x tokens per set); empty items are skipped."""
    cases = []
    for item in text.split(','):
        if not item:
            continue
        parts = item.split('x')
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"Expected sizes as 'BxN' (sets x tokens), "
                             f"e.g. 32x1024 (got {item!r})")
        cases.append((int(parts[0]), int(parts[1])))
    return cases


def point_conv(channels: int, heads: int, k: int, relative_bias: bool = False,
               norm_mode: str = 'node'):
    """One :class:`~samsa_geo.nn.SamsaConv` as
    :class:`~samsa_geo.nn.models.SamsaPointClassifier` builds it (GELU,
    per-point LayerNorm unless ``norm_mode`` says otherwise)."""
    from samsa_geo.nn import SamsaConv
    return SamsaConv(channels, heads=heads, k=k, act='gelu',
                     norm='layer_norm', norm_kwargs={'mode': norm_mode},
                     attn_kwargs=dict(relative_bias=relative_bias))


def compile_module(module, mode: Optional[str] = None) -> Callable:
    """``torch.compile(module, mode=mode)``; under CUDA graphs
    (``reduce-overhead``, ``max-autotune``) every call starts a new step, so
    a call's outputs may be overwritten by the next call's."""
    compiled = torch.compile(module, mode=mode)
    if mode not in ('reduce-overhead', 'max-autotune'):
        return compiled

    def step(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args, **kwargs)
    return step


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, ' \
           f'{torch.get_num_threads()} threads)'


class CudaMemory:
    """The CUDA caching allocator's counts on ``device``, as :func:`measure`
    reads them (a test passes an object with the same methods)."""
    def __init__(self, device: torch.device):
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def max_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def drop_kept_state(modules: Iterable[torch.nn.Module]) -> None:
    """Drops what the samsa_geo layers among ``modules`` (and their
    submodules) keep between calls: :class:`~samsa_geo.nn.SamsaConv`'s CUDA
    graphs of inference and of training calls and its inference caches,
    :class:`~samsa_geo.nn.SamsaAttention`'s kept casts,
    :class:`~samsa_geo.nn.models.SamsaGraphModel`'s graphs of training
    steps, as ``train()`` /
    ``eval()`` and ``.to()`` drop them. A case's warm-up then captures its
    own graphs (counted in its ``held_mb``), and no memory of an earlier
    case's stays in the baseline of the next."""
    modules = list(modules)
    if not modules:
        return
    from samsa_geo.nn import SamsaAttention, SamsaConv
    from samsa_geo.nn.models import SamsaGraphModel
    for module in modules:
        for m in module.modules():
            if isinstance(m, SamsaGraphModel):
                m._train_graphs.clear()
            elif isinstance(m, SamsaConv):
                m._graphs.clear()
                m._train_graphs.clear()
                m._mlp_cache = None
                m._affine_cache = {}
            elif isinstance(m, SamsaAttention):
                m._projection_cache = None


def measure(fn: Callable[[], None], device: torch.device, warmup: int = 3,
            repeat: int = 10, max_seconds: float = 20.0,
            pipelined: bool = False,
            modules: Iterable[torch.nn.Module] = (),
            memory: Optional[CudaMemory] = None) -> Dict[str, float]:
    """Median milliseconds of ``fn`` and its peak memory (CUDA only).

    Times with CUDA events on the GPU and a wall clock on the CPU; stops
    repeating after ``max_seconds``. Each call is timed alone (a latency:
    the device waits for the host's first launch), unless ``pipelined``:
    then ``repeat`` calls run back to back, as a stream of batches does,
    and ``ms`` is their total over ``repeat`` (a throughput, median of
    three such rounds; CUDA only).

    Before the warm-up, what earlier cases left is let go: the graph
    caches and kept casts of ``modules`` (the layers ``fn`` calls, see
    :func:`drop_kept_state`), Python's garbage, and on CUDA the caching
    allocator's free blocks; the peak statistics are reset and the
    baseline is taken after that. ``peak_mb`` is the peak of the timed
    calls above what was allocated before them; ``first_peak_mb`` counts
    from the baseline before the warm-up, so that memory kept from the
    first calls (a CUDA graph's pool, captured during the warm-up; kept
    casts) is in it; ``held_mb`` is that kept memory alone (allocated
    after the warm-up above before it), so ``held_mb + peak_mb`` is the
    steady peak of a call. Where the warm-up freed memory allocated before
    it (``held_mb`` would be negative: the baseline held something the
    case let go), ``held_mb`` and ``first_peak_mb`` are :obj:`None` and
    ``memory_warning`` says why. ``memory`` replaces the CUDA allocator's
    counts (tests).
    """
    cuda = device.type == 'cuda'
    if memory is None and cuda:
        memory = CudaMemory(device)
    # Rounds timed, of calls each.
    rounds, calls = (3, repeat) if pipelined and cuda else (repeat, 1)
    drop_kept_state(modules)
    gc.collect()
    if memory is not None:
        memory.synchronize()
        memory.empty_cache()
        memory.reset_peak()
        first_base = memory.allocated()
    for _ in range(warmup):
        fn()
    peak_mb: Optional[float] = None
    first_peak_mb: Optional[float] = None
    held_mb: Optional[float] = None
    if memory is not None:
        memory.synchronize()
        first_peak = memory.max_allocated()
        memory.reset_peak()
        base = memory.allocated()
        held_mb = (base - first_base) / 2**20
    times: List[float] = []
    start_all = time.perf_counter()
    for _ in range(rounds):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / calls)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start_all > max_seconds:
            break
    warning = None
    if memory is not None:
        memory.synchronize()
        peak = memory.max_allocated()
        peak_mb = (peak - base) / 2**20
        first_peak_mb = (max(peak, first_peak) - first_base) / 2**20
        if held_mb < 0:
            warning = (f'the warm-up freed {-held_mb:.1f} MB allocated '
                       'before it: held_mb and first_peak_mb not counted')
            held_mb = first_peak_mb = None
    out = {'ms': statistics.median(times), 'peak_mb': peak_mb,
           'first_peak_mb': first_peak_mb, 'held_mb': held_mb,
           'repeats': len(times) * calls}
    if warning is not None:
        out['memory_warning'] = warning
    return out


def _git(args: List[str], path: Optional[str]):
    """``git args`` run at ``path`` (default: this repository): the
    completed process, or :obj:`None` where git does not run there."""
    import subprocess
    here = path or os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(['git', *args], capture_output=True, text=True,
                              cwd=here)
    except OSError:
        return None


def git_commit(path: Optional[str] = None) -> Optional[str]:
    """The commit checked out at ``path`` (default: this repository), with
    ``-dirty`` appended where tracked files differ from it (a copy of a
    newer tree over an older checkout, say), or :obj:`None` outside a git
    checkout."""
    got = _git(['describe', '--always', '--dirty', '--abbrev=40'], path)
    if got is None or got.returncode != 0:
        return None
    return got.stdout.strip() or None


def git_dirty(commit: Optional[str] = None,
              path: Optional[str] = None) -> Optional[bool]:
    """Whether the tracked files at ``path`` (default: this repository)
    differ from ``commit`` (default: the checked-out one), as git sees
    them; :obj:`None` where git cannot tell (no checkout, or a commit that
    the checkout does not know: a copy over a stale or absent ``.git``)."""
    commit = commit or 'HEAD'
    if commit.startswith('-'):
        return None
    got = _git(['rev-parse', '--verify', '--quiet', commit + '^{commit}'],
               path)
    if got is None or got.returncode != 0 or not got.stdout.strip():
        return None
    diff = _git(['diff', '--quiet', got.stdout.strip(), '--'], path)
    if diff is None or diff.returncode not in (0, 1):
        return None
    return diff.returncode == 1


def commit_fields(commit: Optional[str] = None,
                  path: Optional[str] = None) -> dict:
    """``commit`` and ``dirty`` of a record. ``commit`` is the one given
    (``--commit``: where git cannot name the tree's commit), recorded as
    given, else git's (:func:`git_commit`: ``-dirty`` appended where the
    tree differs). ``dirty`` says whether the tree measured differs from
    that commit: :obj:`True` where the commit's name ends in ``-dirty`` or
    git sees changes against it, :obj:`False` where git sees none,
    :obj:`None` where git cannot tell (no checkout, or a given commit
    that the checkout does not know)."""
    if not commit:
        commit = git_commit(path)
        return dict(commit=commit, dirty=None if commit is None
                    else commit.endswith('-dirty'))
    marked = commit.endswith('-dirty')
    dirty = git_dirty(commit[:-len('-dirty')] if marked else commit, path)
    return dict(commit=commit, dirty=True if marked else dirty)


def add_commit_argument(parser) -> None:
    """The ``--commit`` option of every benchmark script (see
    :func:`commit_fields`)."""
    parser.add_argument(
        '--commit', default=None,
        help='commit of the tree measured, recorded as given (where git '
        'cannot name it: a copy without .git or over an older checkout); '
        "default: git's, -dirty appended where the tree differs. Each "
        "record's 'dirty' says whether git sees changes against it (null "
        'where git cannot tell)')


def token_kernel_main(name: str, case: Callable, sweep: Callable,
                      columns: List[str]) -> None:
    """The command line of a benchmark that times one of the layer's
    kernels alone over token counts (``--tokens``, ``--channels``,
    ``--commit``, ``--sweep``, ``--out``; records in
    ``results/<name>.json``): ``case(M, C, device, args)`` returns the
    records of ``M`` tokens, printed by ``columns``; with ``--sweep``,
    ``sweep(M, C, device)`` prints instead."""
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', default='32768,65536,262144')
    p.add_argument('--channels', type=int, default=256)
    add_commit_argument(p)
    p.add_argument('--sweep', action='store_true')
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'results',
        name + '.json'))
    args = p.parse_args()
    dev = torch.device('cuda')
    tokens = [int(t) for t in args.tokens.split(',')]
    if args.sweep:
        for M in tokens:
            sweep(M, args.channels, dev)
        return
    records = []
    for M in tokens:
        records += case(M, args.channels, dev, args)
    print_table(records, columns)
    write_records(records, args.out)


def provenance(device: torch.device, args) -> dict:
    """What produced a record: device, torch, commit (``args.commit`` where
    given) and whether the tree differs from it (``dirty``, see
    :func:`commit_fields`), date and the script's flags (less
    ``commit``)."""
    import datetime
    fields = commit_fields(getattr(args, 'commit', None))
    flags = {k: v for k, v in vars(args).items() if k not in ('commit', )}
    return dict(device=device_name(device), torch=torch.__version__,
                **fields, date=datetime.date.today().isoformat(),
                flags=flags)


def measure_or_error(fn: Callable[[], None], device: torch.device,
                     **kwargs) -> Dict[str, object]:
    """:func:`measure`, or ``ms=None`` and the error where the call runs out
    of memory or hits a kernel limit (the benchmark records it and goes
    on): its message and where it was raised (see :func:`error_text`)."""
    try:
        return measure(fn, device, **kwargs)
    except Exception as e:
        if not is_oom(e) and not isinstance(e, RuntimeError):
            raise
        return dict(ms=None, peak_mb=None,
                    error='oom' if is_oom(e) else error_text(e))
    finally:
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def error_text(err: BaseException) -> str:
    """The first 160 characters of :obj:`err`'s message and, where it has a
    traceback, where it was raised: ``[file:line function]`` of the
    innermost frame of the error it wraps (``__cause__``, as the compiler's
    errors wrap the backend's) or of its own. A compiler error's message
    alone may be empty (``'AssertionError: '``)."""
    text = str(err)[:160]
    inner = err.__cause__ if err.__cause__ is not None else err
    frames = traceback.extract_tb(inner.__traceback__)
    if not frames:
        return text
    last = frames[-1]
    return (f'{text} [{os.path.basename(last.filename)}:{last.lineno} '
            f'{last.name}]')


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or \
        'out of memory' in str(err).lower()


def _argv_flags(argv: List[str]) -> Tuple[str, Optional[str]]:
    """The command-line flags ``argv`` less ``--out`` and ``--commit``, as
    one string, and the value of ``--commit`` (:obj:`None` without)."""
    argv, flags, commit = list(argv), [], None
    while argv:
        arg = argv.pop(0)
        if arg in ('--out', '--commit'):
            value = argv.pop(0) if argv else None
            if arg == '--commit':
                commit = value
        elif arg.startswith('--commit='):
            commit = arg.split('=', 1)[1]
        elif not arg.startswith('--out='):
            flags.append(arg)
    return ' '.join(flags), commit


def run_provenance(commit: Optional[str] = None) -> dict:
    """Provenance of this process's run where a record lacks it: torch,
    the commit (``commit``, else the command line's ``--commit``, else
    git's; :obj:`None` where none) and whether the tree differs from it
    (``dirty``, see :func:`commit_fields`), the date and the command-line
    flags (less ``--out`` and ``--commit``)."""
    import datetime
    import sys
    flags, given = _argv_flags(sys.argv[1:])
    return dict(torch=torch.__version__, **commit_fields(commit or given),
                date=datetime.date.today().isoformat(), flags=flags)


def add_to_results(path: str, items: List[dict],
                   same_run: Callable[[dict], object]) -> None:
    """Adds the items of one run to the benchmark's result file ``path`` (a
    JSON list). An item already there is replaced where a new item is of
    the same run (``same_run`` gives both the same key) at the same commit
    (``commit``, and ``dirty`` or not): a configuration measured again.
    Items of another commit are kept (they may be quoted elsewhere), and
    so are items without a commit (which one is not known)."""
    def key(r):
        return repr((same_run(r), r.get('commit'), r.get('dirty') is True))

    old: List[dict] = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    keys = {key(r) for r in items if r.get('commit') is not None}
    kept = [r for r in old if r.get('commit') is None or key(r) not in keys]
    folder = os.path.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    # Written beside the file, then moved over it: a run stopped mid-write
    # leaves the file as it was.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path))
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(kept + items, f, indent=1)
            f.write('\n')
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_records(records: List[dict], path: str,
                  commit: Optional[str] = None, quiet: bool = False) -> None:
    """Adds the records of this run to the result file ``path`` of their
    benchmark (see :func:`add_to_results`; a run is its device and flags,
    measured again at the same commit), each with its provenance: device,
    torch, commit (``commit`` where given, see :func:`run_provenance`),
    dirty, date and flags; a record's own fields win. A run may call it
    again with more records: they replace those it wrote before."""
    stamp = run_provenance(commit)
    records = [{**stamp, **r} for r in records]  # a record's own fields win
    add_to_results(path, records,
                   lambda r: (r.get('device'), r.get('flags')))
    if not quiet:
        print(f'wrote {len(records)} records to {path}')


def print_table(records: List[dict], keys: List[str]) -> None:
    widths = [max(len(k), *(len(_fmt(r.get(k))) for r in records))
              for k in keys]
    print('  '.join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in records:
        print('  '.join(_fmt(r.get(k)).ljust(w) for k, w in zip(keys, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.3f}' if v < 100 else f'{v:.1f}'
    return str(v)
