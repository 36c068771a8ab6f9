"""Writes the tables of docs/benchmarks.md from the result files in
benchmarks/results/ (one file per benchmark, one record per measurement,
each with its provenance: device, torch, commit, date, flags): every SAMSA
time as a ratio against the peers measured in the same run. Only the part
between the two marker lines of the page is rewritten.

    python benchmarks/summarize.py
"""
import argparse
import json
import os.path as osp
import re

HERE = osp.dirname(osp.abspath(__file__))
RESULTS = osp.join(HERE, 'results')
DOC = osp.join(HERE, '..', 'docs', 'benchmarks.md')
BEGIN = '% Begin of the tables written by benchmarks/summarize.py'
END = '% End of the tables written by benchmarks/summarize.py'

#: Result files with generated tables: file stem, section title, script.
BENCHMARKS = (
    ('attention', 'Attention and layers', 'attention.py'),
    ('points', 'Point-cloud models', 'points.py'),
    ('bias_kernels', 'Relative-bias attention kernel alone',
     'flex_options.py'),
    ('scorer_kernel', 'Importance scorer alone', 'scorer_kernel.py'),
    ('scorer_grad_kernel', "Importance scorer's backward alone",
     'scorer_grad_kernel.py'),
    ('gather_attention_kernel', "Fused path's attention kernel alone",
     'gather_attention_kernel.py'),
    ('batch_norm_kernel', "The layer's training batch norm alone",
     'batch_norm_kernel.py'),
    ('residual_affine_kernel',
     "The layer's inference residual sum and batch norm alone",
     'residual_affine_kernel.py'),
    ('graph_scale', 'Large graph, full-batch training', 'graph_scale.py'),
    ('ops', 'Geometry ops', 'ops.py'),
    ('ddp', 'Data-parallel training', 'run_ddp.sh'),
)


def load(name):
    path = osp.join(RESULTS, name + '.json')
    if not osp.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def flag_text(flags):
    """Command-line flags as typed, less ``--out`` (records of some scripts
    keep them as a dict of parsed arguments)."""
    if isinstance(flags, dict):
        # A switch (store_true) is typed alone, and only where it is on.
        return ' '.join(f"--{k.replace('_', '-')}"
                        + ('' if isinstance(v, bool) else f' {v}')
                        for k, v in flags.items()
                        if k != 'out' and v is not False)
    return re.sub(r'\s*--out[= ]\S+', '', flags or '').strip()


def runs(records, with_flags=True):
    """The records grouped by run (device, flags, commit, date, note), in
    the order of the file."""
    groups = {}
    for r in records:
        key = (r.get('device') or (r.get('machine') or {}).get('gpu')
               or (r.get('machine') or {}).get('device'),
               flag_text(r.get('flags')) if with_flags else None,
               r.get('commit'), r.get('date'), r.get('note'))
        groups.setdefault(key, []).append(r)
    return list(groups.items())


def provenance_line(key, script):
    device, flags, commit, date, note = key
    cmd = f'python benchmarks/{script}' if script.endswith('.py') else \
        f'bash benchmarks/{script}'
    text = f'`{cmd}{" " + flags if flags else ""}`: **{device}**, ' \
        f"commit {commit[:7] if commit else 'not recorded'}, {date}"
    return text + (f' ({note})' if note else '') + '.'


def fmt(v, digits=2):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return f'{v:.{digits}f}' if v < 1000 else f'{v:,.0f}'
    return str(v)


def ratio(a, b):
    if a is None or b is None or not a:
        return 'n/a'
    return f'{b / a:.1f}x'


def attention_table(records, lines):
    if not records:
        return
    by = {(r['op'], r['batch'], r['n'], r['pass']): r for r in records}
    cases = sorted({(r['batch'], r['n']) for r in records},
                   key=lambda c: (c[0] > 1, c[1]))
    rec0 = records[0]
    lines += [f"Device: **{rec0['device']}**, torch {rec0['torch']}, "
              f"{rec0['dtype']}, channels {rec0['channels']}, heads "
              f"{rec0['heads']}, k = {rec0.get('k') or 256}. Times are "
              f"medians in ms; *speed-up* = peer time / SAMSA time; *mem* = "
              f"SAMSA peak / SDPA peak (activations, CUDA only).", '']
    lines += ['| sets x n | pass | SAMSA ms | SDPA ms | speed-up vs SDPA | '
              'projections ms (floor) | SAMSA / floor | mem vs SDPA | '
              'SamsaConv ms | GPSConv multihead ms | GPSConv performer ms | '
              'speed-up vs multihead | vs performer |',
              '|' + '---|' * 13]
    for B, n in cases:
        for pas in ('fwd', 'fwdbwd'):
            get = lambda op: by.get((op, B, n, pas), {})  # noqa: E731
            s, d, p = get('samsa_attention'), get('sdpa'), get('projections')
            c, gm, gp = (get('samsa_conv'), get('gps_conv_multihead'),
                         get('gps_conv_performer'))
            if not s:
                continue
            mem = 'n/a'
            if s.get('peak_mb') and d.get('peak_mb'):
                mem = f"{s['peak_mb'] / d['peak_mb']:.2f}"
            floor = 'n/a'
            if s.get('ms') and p.get('ms'):
                floor = f"{s['ms'] / p['ms']:.1f}"
            gm_ms = gm.get('ms') if gm else None
            gm_txt = fmt(gm_ms) if gm_ms else (gm.get('error', 'skipped')
                                               if gm else 'skipped')
            lines.append(
                f"| {B} x {n} | {pas} | {fmt(s.get('ms'), 3)} | "
                f"{fmt(d.get('ms'), 3)} | {ratio(s.get('ms'), d.get('ms'))} | "
                f"{fmt(p.get('ms'), 3)} | {floor} | {mem} | "
                f"{fmt(c.get('ms'), 3)} | {gm_txt} | "
                f"{fmt(gp.get('ms')) if gp else 'skipped'} | "
                f"{ratio(c.get('ms'), gm_ms)} | "
                f"{ratio(c.get('ms'), gp.get('ms') if gp else None)} |")
    lines.append('')


def compiled_table(records, lines):
    if not records:
        return
    lines += ['| sets x n | pass | op | eager ms | compiled ms | '
              'compile mode |', '|---|---|---|---|---|---|']
    by = {(r['op'], r['batch'], r['n'], r['pass']): r for r in records}
    for (op, B, n, pas), r in sorted(by.items(), key=lambda kv: (
            kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
        if op.endswith('_compiled'):
            continue
        c = by.get((op + '_compiled', B, n, pas), {})
        lines.append(f"| {B} x {n} | {pas} | {op} | {fmt(r.get('ms'), 3)} | "
                     f"{fmt(c.get('ms'), 3)} | {c.get('compile_mode')} |")
    lines.append('')


def simple_table(records, keys, lines):
    if not records:
        return
    lines += ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    for r in records:
        lines.append('| ' + ' | '.join(fmt(r.get(k)) for k in keys) + ' |')
    lines.append('')


def run_table(name, recs, lines):
    rec0 = recs[0]
    if name == 'attention':
        if any(r['op'].endswith('_compiled') for r in recs):
            compiled_table(recs, lines)
        else:
            attention_table(recs, lines)
    elif name == 'points':
        lines += [f"{rec0['dtype']}, {rec0['batch']} clouds x {rec0['n']} "
                  'points, inference.', '']
        simple_table(recs, ['op', 'params', 'ms', 'clouds_per_s',
                            'points_per_s', 'ms_per_cloud', 'error'], lines)
    elif name == 'bias_kernels':
        lines += [f"bf16, {rec0['tiles']} tiles x {rec0['heads']} heads x "
                  f"{rec0['queries']} queries x {rec0['k']} keys, head "
                  f"dimension {rec0['head_dim']}; max_err: against a "
                  'float64 reference.', '']
        simple_table(recs, ['kernel', 'kernel_version', 'normals',
                            'exact_math', 'ms', 'pairs_per_s', 'max_err',
                            'best_config'], lines)
    elif name == 'scorer_kernel':
        lines += [f"bf16, {rec0['tokens']:,} tokens x {rec0['channels']} "
                  f"channels, {rec0['heads']} heads; calls back to back; "
                  'max_abs_err: against the PyTorch formula.', '']
        simple_table(recs, ['op', 'ms', 'max_abs_err'], lines)
    elif name == 'scorer_grad_kernel':
        lines += [f"{rec0['tokens']:,} tokens x {rec0['channels']} "
                  f"channels, {rec0['heads']} heads, bf16 LayerNorm input, "
                  'float32 tokens; calls back to back; max_rel_err: the '
                  "largest relative deviation of a gradient from PyTorch's "
                  'ops.', '']
        simple_table(recs, ['op', 'ms', 'max_rel_err'], lines)
    elif name == 'batch_norm_kernel':
        lines += [f"{rec0['channels']} channels, float32 stream plus a "
                  'bfloat16 residual, the output and its bfloat16 copy; '
                  'calls back to back; max_abs_err: the output against '
                  "PyTorch's.", '']
        simple_table(recs, ['tokens', 'op', 'pass', 'ms', 'max_abs_err'],
                     lines)
    elif name == 'residual_affine_kernel':
        lines += [f"{rec0['channels']} channels, float32 stream plus a "
                  'bfloat16 residual, a per-channel scale and shift '
                  '(`_copy`: and the bfloat16 copy); calls back to back; '
                  'gb_s: bytes read and written per call over its time; '
                  'max_abs_err: against PyTorch\'s float32 output (for '
                  "`pytorch_copy`, its bfloat16 copy's).", '']
        simple_table(recs, ['tokens', 'op', 'ms', 'gb_s', 'max_abs_err'],
                     lines)
    elif name == 'gather_attention_kernel':
        lines += [f"bf16, {rec0['heads']} heads of {rec0['head_dim']}, "
                  f"k = {rec0['k']} candidates per set and head; calls back "
                  'to back; per size the default configuration, cuDNN over '
                  'the gathered keys and the three fastest configurations; '
                  "max_abs_err: against the default's output.", '']
        shown = []
        for size in dict.fromkeys((r['batch'], r['n']) for r in recs):
            runs = [r for r in recs if (r['batch'], r['n']) == size]
            timed = sorted((r for r in runs if r.get('ms') is not None
                            and r['op'].startswith('triton_m')),
                           key=lambda r: r['ms'])
            shown += [r for r in runs if not r['op'].startswith('triton_m')]
            shown += timed[:3]
        simple_table(shown, ['batch', 'n', 'op', 'ms', 'max_abs_err'], lines)
    elif name == 'graph_scale':
        for run in recs:
            simple_table(run['results'], [
                'model', 'num_nodes', 'num_edges', 'num_params',
                'epoch_time_s', 'peak_memory_mb', 'train_acc_after'], lines)
    elif name == 'ops':
        keys = ['op', 'case', 'impl', 'n', 'k', 'batch', 'ms', 'target_ms',
                'clouds_per_s', 'ratio']
        if any('pipelined' in r for r in recs):  # runs that time both
            keys.insert(6, 'pipelined')
        simple_table(recs, keys, lines)
    elif name == 'ddp':
        rows = [dict(gpus=r['gpus'], batch_per_gpu=r['batch_size_per_gpu'],
                     scaling=r['scaling'] or '-',
                     seconds_per_epoch=', '.join(
                         f"{e['time']:.2f}" for e in r['epochs']))
                for r in recs]
        simple_table(rows, ['gpus', 'batch_per_gpu', 'scaling',
                            'seconds_per_epoch'], lines)


def tables():
    """The generated part of docs/benchmarks.md, as lines."""
    lines = []
    for name, title, script in BENCHMARKS:
        records = load(name)
        if not records:
            continue
        lines += [f'### {title}', '']
        grouped = runs(records, with_flags=name not in (
            'bias_kernels', 'ddp'))
        for key, recs in grouped:
            lines += [provenance_line(key, script), '']
            run_table(name, recs, lines)
    return lines


def page(text):
    """``text`` (the page) with the part between its marker lines written
    anew from the result files."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"Expected the marker lines '{BEGIN}' and '{END}' "
                         f'in {DOC}')
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return head + '\n'.join([BEGIN, ''] + tables() + [END]) + tail


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split('\n\n')[0]).parse_args(
        argv)
    with open(DOC) as f:
        text = page(f.read())
    with open(DOC, 'w') as f:
        f.write(text)
    print(f'wrote {DOC}')


if __name__ == '__main__':
    main()
