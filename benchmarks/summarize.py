"""Writes docs/benchmarks.md from the JSON records in benchmarks/results/:
every SAMSA time as a ratio against the peers measured in the same run.

    python benchmarks/summarize.py
"""
import json
import os
import os.path as osp

HERE = osp.dirname(osp.abspath(__file__))
RESULTS = osp.join(HERE, 'results')
DOC = osp.join(HERE, '..', 'docs', 'benchmarks.md')


#: Extra point-benchmark runs: file suffix, heading and the flags of
#: ``benchmarks/points.py`` that produced them.
POINT_VARIANTS = (
    ('_bf16_weights', 'bfloat16 parameters', '--weights bf16'),
    ('_bf16_weights_compiled', 'bfloat16 parameters, torch.compile',
     '--weights bf16 --compile'),
    ('_bf16_weights_autotune',
     "bfloat16 parameters, torch.compile(mode='max-autotune-no-cudagraphs')",
     '--weights bf16 --compile --compile-mode max-autotune-no-cudagraphs'),
    ('_bf16_weights_cudagraphs',
     "bfloat16 parameters, torch.compile(mode='reduce-overhead')",
     '--weights bf16 --compile --compile-mode reduce-overhead'),
    ('_bf16_weights_h200', 'bfloat16 parameters, H200', '--weights bf16'),
    ('_bf16_weights_compiled_h200',
     'bfloat16 parameters, torch.compile, H200', '--weights bf16 --compile'),
    ('_bf16_weights_compiled_h200_b',
     'bfloat16 parameters, torch.compile, H200, repeat',
     '--weights bf16 --compile'),
    ('_bf16_weights_cudagraphs_h200',
     "bfloat16 parameters, torch.compile(mode='reduce-overhead'), H200, "
     'code before the scorer kernel',
     '--weights bf16 --compile-mode reduce-overhead'),
    ('_bf16_weights_maxautotune_h200',
     "bfloat16 parameters, torch.compile(mode='max-autotune'), H200, code "
     'before the scorer kernel',
     '--weights bf16 --compile-mode max-autotune'),
    ('_bf16_weights_pipelined_h200',
     'bfloat16 parameters, calls back to back (throughput), H200',
     '--weights bf16 --pipelined'),
    ('_bf16_weights_compiled_pipelined_h200',
     'bfloat16 parameters, torch.compile, calls back to back (throughput), '
     'H200', '--weights bf16 --compile --pipelined'),
    ('_bf16_weights_compiled_pipelined_h200_b',
     'bfloat16 parameters, torch.compile, calls back to back (throughput), '
     'H200, repeat', '--weights bf16 --compile --pipelined --repeat 30'),
)


def load(name):
    path = osp.join(RESULTS, name)
    if not osp.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def load_all(prefix):
    """The records of every result file whose name starts with ``prefix``,
    file by file in name order."""
    for name in sorted(os.listdir(RESULTS)):
        if name.startswith(prefix):
            yield load(name)


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


def main():
    lines = ['# Benchmarks', '',
             'Generated by `python benchmarks/summarize.py` from the JSON '
             'records in `benchmarks/results/` (one record per measurement). '
             'GPU numbers come from `bash benchmarks/run_gpu.sh` on the lent '
             'GPU machine; CPU numbers from the 2-core development machine '
             '(ratios only: absolute CPU times depend on the load).', '']
    for tag, title in (('cuda', 'GPU'), ('cpu', 'CPU')):
        att = load(f'attention_{tag}.json')
        if att:
            lines += [f'## Attention and layers ({title})', '',
                      f'`python benchmarks/attention.py --device {tag}`', '']
            attention_table(att, lines)
        comp = load(f'attention_{tag}_compiled.json')
        if comp:
            lines += [f'### torch.compile ({title})', '']
            compiled_table(comp, lines)
        pts = load(f'points_{tag}.json')
        if pts:
            lines += [f'## Point-cloud models ({title})', '',
                      f'`python benchmarks/points.py --device {tag}` '
                      f"({pts[0]['device']}, {pts[0]['dtype']}, "
                      f"{pts[0]['batch']} clouds x {pts[0]['n']} points, "
                      'inference)', '']
            simple_table(pts, ['op', 'params', 'ms', 'clouds_per_s',
                               'points_per_s', 'ms_per_cloud'], lines)
        for suffix, how, flags in POINT_VARIANTS:
            var = load(f'points_{tag}{suffix}.json')
            if not var:
                continue
            lines += [f'### {how} ({title})', '',
                      f"`python benchmarks/points.py --device {tag} "
                      f"{flags}` ({var[0]['device']})", '']
            simple_table(var, ['op', 'params', 'ms', 'clouds_per_s',
                               'points_per_s', 'ms_per_cloud', 'error'],
                         lines)
        for kern in load_all(f'bias_kernels_{tag}'):
            lines += [f'### Relative-bias attention kernel alone ({title})',
                      '', '`python benchmarks/flex_options.py --kernel K '
                      '[--normals] [--exact-math]` '
                      f"({kern[0]['device']}, bf16, {kern[0]['tiles']} tiles "
                      f"x {kern[0]['heads']} heads x {kern[0]['queries']} "
                      f"queries x {kern[0]['k']} keys, head dimension "
                      f"{kern[0]['head_dim']}; max_err: against a float64 "
                      'reference)', '']
            simple_table(kern, ['kernel', 'kernel_version', 'normals',
                                'exact_math', 'ms',
                                'pairs_per_s', 'max_err', 'best_config'],
                         lines)
        for sk in load_all(f'scorer_kernel_{tag}'):
            lines += [f'### Importance scorer alone ({title})', '',
                      '`python benchmarks/scorer_kernel.py` '
                      f"({sk[0]['device']}, bf16, {sk[0]['tokens']:,} "
                      f"tokens x {sk[0]['channels']} channels, "
                      f"{sk[0]['heads']} heads; calls back to back; "
                      'max_abs_err: against the PyTorch formula)', '']
            simple_table(sk, ['op', 'ms', 'max_abs_err'], lines)
        gs = load(f'graph_scale_{tag}.json')
        if gs:
            lines += [f'## Large graph, full-batch training ({title})', '',
                      f'`python benchmarks/graph_scale.py --device {tag}`',
                      '']
            rows = gs['results'] if isinstance(gs, dict) else gs
            simple_table(rows, ['model', 'num_nodes', 'num_edges',
                                'num_params', 'epoch_time_s',
                                'peak_memory_mb', 'train_acc_after'], lines)
        ops = load(f'ops_{tag}.json')
        if ops:
            lines += [f'## Geometry ops ({title})', '',
                      f'`python benchmarks/ops.py --device {tag}`', '']
            simple_table(ops, ['op', 'case', 'impl', 'n', 'k', 'batch',
                               'device', 'ms', 'target_ms', 'clouds_per_s',
                               'ratio'], lines)
    extra = osp.join(HERE, 'NOTES.md')
    if osp.exists(extra):
        with open(extra) as f:
            lines += [f.read()]
    os.makedirs(osp.dirname(DOC), exist_ok=True)
    with open(DOC, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print(f'wrote {DOC}')


if __name__ == '__main__':
    main()
