"""Timing and record helpers shared by the benchmark scripts."""
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

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


def measure(fn: Callable[[], None], device: torch.device, warmup: int = 3,
            repeat: int = 10, max_seconds: float = 20.0,
            pipelined: bool = False) -> Dict[str, float]:
    """Median milliseconds of ``fn`` and its peak memory (CUDA only).

    Times with CUDA events on the GPU and a wall clock on the CPU; stops
    repeating after ``max_seconds``. Each call is timed alone (a latency:
    the device waits for the host's first launch), unless ``pipelined``:
    then ``repeat`` calls run back to back, as a stream of batches does,
    and ``ms`` is their total over ``repeat`` (a throughput, median of
    three such rounds; CUDA only). ``peak_mb`` is the peak of the timed
    calls above what was allocated before them; ``first_peak_mb`` counts
    from before the warm-up, so that memory kept from the first calls (a
    CUDA graph's pool, captured during the warm-up; kept casts) is in it;
    ``held_mb`` is that kept memory alone (allocated after the warm-up
    above before it), so ``held_mb + peak_mb`` is the steady peak of a
    call.
    """
    cuda = device.type == 'cuda'
    # Rounds timed, of calls each.
    rounds, calls = (3, repeat) if pipelined and cuda else (repeat, 1)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        first_base = torch.cuda.memory_allocated(device)
    for _ in range(warmup):
        fn()
    peak_mb: Optional[float] = None
    first_peak_mb: Optional[float] = None
    held_mb: Optional[float] = None
    if cuda:
        torch.cuda.synchronize(device)
        first_peak_mb = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
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
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        peak_mb = (peak - base) / 2**20
        first_peak_mb = (max(peak, first_peak_mb) - first_base) / 2**20
    return {'ms': statistics.median(times), 'peak_mb': peak_mb,
            'first_peak_mb': first_peak_mb, 'held_mb': held_mb,
            'repeats': len(times) * calls}


def git_commit(path: Optional[str] = None) -> Optional[str]:
    """The commit checked out at ``path`` (default: this repository), with
    ``-dirty`` appended where tracked files differ from it (a copy of a
    newer tree over an older checkout, say), or :obj:`None` outside a git
    checkout."""
    import subprocess
    here = path or os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ['git', 'describe', '--always', '--dirty', '--abbrev=40'],
            capture_output=True, text=True, cwd=here,
            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit or None


def provenance(device: torch.device, args) -> dict:
    """What produced a record: device, torch, commit (``args.commit`` where
    given), date and the script's flags."""
    import datetime
    commit = getattr(args, 'commit', None) or git_commit()
    flags = {k: v for k, v in vars(args).items() if k not in ('commit', )}
    return dict(device=device_name(device), torch=torch.__version__,
                commit=commit, date=datetime.date.today().isoformat(),
                flags=flags)


def measure_or_error(fn: Callable[[], None], device: torch.device,
                     **kwargs) -> Dict[str, object]:
    """:func:`measure`, or ``ms=None`` and the error where the call runs out
    of memory or hits a kernel limit (the benchmark records it and goes
    on)."""
    try:
        return measure(fn, device, **kwargs)
    except Exception as e:
        if not is_oom(e) and not isinstance(e, RuntimeError):
            raise
        return dict(ms=None, peak_mb=None,
                    error='oom' if is_oom(e) else str(e)[:160])
    finally:
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or \
        'out of memory' in str(err).lower()


def run_provenance() -> dict:
    """Provenance of this process's run where a record lacks it: torch,
    the checked-out commit (:obj:`None` outside git), the date and the
    command-line flags (less ``--out``)."""
    import datetime
    import sys
    commit = git_commit()
    argv, flags = sys.argv[1:], []
    while argv:
        arg = argv.pop(0)
        if arg == '--out':
            argv = argv[1:]
        elif not arg.startswith('--out='):
            flags.append(arg)
    return dict(torch=torch.__version__, commit=commit,
                date=datetime.date.today().isoformat(), flags=' '.join(flags))


def add_to_results(path: str, items: List[dict],
                   same_run: Callable[[dict], object]) -> None:
    """Adds the items of one run to the benchmark's result file ``path`` (a
    JSON list): items already there for which ``same_run`` gives a key
    shared with a new item are replaced (a configuration measured again),
    the others kept."""
    old: List[dict] = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    keys = {repr(same_run(r)) for r in items}
    kept = [r for r in old if repr(same_run(r)) not in keys]
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump(kept + items, f, indent=1)
        f.write('\n')


def write_records(records: List[dict], path: str) -> None:
    """Adds the records of this run to the result file ``path`` of their
    benchmark (see :func:`add_to_results`; a run is its device and flags),
    each with its provenance: device, torch, commit, date and flags."""
    stamp = run_provenance()
    records = [{**stamp, **r} for r in records]  # a record's own fields win
    add_to_results(path, records,
                   lambda r: (r.get('device'), r.get('flags')))
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
