"""The one markdown table of benchmarks/gpu_check.sh: every part's last `RESULT {...}` line (written by
benchmarks/_bench.py `emit`) from its log, with the run's status per part.

Usage: python benchmarks/gpu_table.py LOGDIR [--gpu 'name, memory'] [--peak-tflops 989] [--total-s 412]
LOGDIR holds `status.tsv` (part, exit code, wall s, limit s per line) and `<part>.log` for each part.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PARTS = {'mim': 'MIM step', 'vqkd': 'VQ-KD step', 'quantizer': 'quantizer step', 'ibot': 'iBOT loss step',
         'loader': 'loader'}           # part name in status.tsv -> table label (the order of the table)
CONFIG_LABELS = {'fp32': 'fp32 eager', 'bf16': 'bf16 eager', 'bf16-compile': 'bf16 + compile',
                 'fp32-compile': 'fp32 + compile'}


def last_result(log: Path) -> dict | None:
    "The last `RESULT {...}` line of a part's log, parsed; None if there is none."
    if not log.is_file(): return None
    lines = [l for l in log.read_text(errors='replace').splitlines() if l.startswith('RESULT ')]
    return json.loads(lines[-1][len('RESULT '):]) if lines else None


def last_error(log: Path) -> str:
    "The last line of a log that names an error, or its last line."
    if not log.is_file(): return 'no log'
    lines = [l.strip() for l in log.read_text(errors='replace').splitlines() if l.strip()]
    errs = [l for l in lines if 'Error' in l or 'error' in l or 'failed' in l]
    return (errs or lines or ['empty log'])[-1][:160]


def cell(x) -> str: return str(x).replace('|', '/').replace('\n', ' ')


def na(why: str) -> str: return f'n/a ({cell(why)})'


def mem(r: dict, cuda: bool) -> str:
    if cuda: return f"{r['peak_bytes'] / 2**30:.2f} GiB"
    return f"+{r['extra_bytes'] / 2**20:.0f} MiB RSS"


def ratio_text(speed: float, mem: float | None = None, digits: int = 2) -> str:
    return f'speed x{speed:.2f}' + (f', mem x{mem:.{digits}f}' if mem is not None else '')


def step_rows(res: dict, what: str) -> list:
    "Rows of a mim_step / vqkd_step RESULT: one per configuration (img/s, memory, ratio to the first, MFU)."
    cuda, rows, base = res['device'] == 'cuda', [], None
    for name in res['planned']:
        r = res['configs'].get(name, dict(error='not measured: the part stopped before it'))
        enc = name == 'encode'
        label = (f"tokenizer `encode` {res['model']} @ {res['img_size']}, B={res['encode_batch']}" if enc
                 else f"{what}, B={res['batch_size']}")
        conf = f"no grad, {r.get('precision', '?')}" if enc else CONFIG_LABELS.get(name, name)
        if 'error' in r: rows.append((label, conf, na(r['error']), '', '', '', '')); continue
        if not enc and base is None: base = r
        ratio = '' if enc else 'baseline' if base is r else f"x{r['ips'] / base['ips']:.2f}"
        mfu = f"{r['mfu']:.1%}" if 'mfu' in r else na('CPU: no peak' if not cuda else 'no FLOP count')
        rows.append((label, conf, f"{r['ips']:.1f} img/s", mem(r, cuda), ratio, mfu,
                     f"first step {r['first_step_s']:.1f} s" + payback(name, r, res['configs'], res['batch_size'])
                     + (f"; {r['cuda_syncs']} host syncs in a step" if 'cuda_syncs' in r else '')))
    return rows


def payback(name: str, r: dict, configs: dict, batch: int) -> str:
    """For a compiled configuration: after how many steps its compile (the first step's extra time) is won back
    against the eager configuration of the same precision and batch; what `train.AUTO_COMPILE_STEPS` should follow."""
    eager = configs.get(name[:-len('-compile')]) if name.endswith('-compile') else None
    if not eager or 'ips' not in eager: return ''
    step_c, step_e = batch / r['ips'], batch / eager['ips']             # median seconds per step
    if step_c >= step_e: return '; no faster than eager: never pays back'
    return f"; pays back after {(r['first_step_s'] - step_c) / (step_e - step_c):.0f} steps"


def mim_rows(res: dict) -> list: return step_rows(res, f"{res['model']} + {res['tokenizer']} @ {res['img_size']}")


def vqkd_rows(res: dict) -> list:
    teacher = f"teacher {res['teacher']} ({res['teacher_weights']} weights)"
    return step_rows(res, f"{res['model']} + {teacher} @ {res['img_size']}")


def quantizer_rows(res: dict) -> list:
    rows = []
    for dev, impls in res['devices'].items():
        what = f"K={res['codebook_size']} C={res['code_dim']} N={res['batch']}x{res['patches']} ({dev})"
        ours, peer = impls['beitv2_lab'], impls.get('vector_quantize_pytorch')
        ratio = (ratio_text(peer['median_s'] / ours['median_s'], ours['peak_bytes'] / max(peer['peak_bytes'], 1), 3)
                 if peer else '')
        rows.append((what, 'ours (beitv2_lab)', f"{ours['median_s'] * 1e3:.2f} ms", f"{ours['peak_bytes'] / 2**20:.1f} MiB",
                     ratio, '', 'fwd (EMA update) + bwd'))
        rows.append((what, 'vector-quantize-pytorch', f"{peer['median_s'] * 1e3:.2f} ms" if peer else na(res['peer']),
                     f"{peer['peak_bytes'] / 2**20:.1f} MiB" if peer else '', 'baseline' if peer else '', '', ''))
    return rows


def ibot_rows(res: dict) -> list:
    what = (f"B={res['batch_size']}x2 global + {res['n_local']} local, N={res['n_tokens']}, D={res['embed_dim']}, "
            f"K={res['out_dim']}")
    scale, unit = (2**30, 'GiB') if res['device'] == 'cuda' else (2**20, 'MiB RSS')
    o, l, c, rows = res['impls'].get('ours', {}), res['impls'].get('lightly', {}), res.get('check', {}), []
    for name, r in (('ours (beitv2_lab.ibot)', o), ('lightly', l)):
        if 'med' not in r: rows.append((what, name, na(r.get('error', 'no result')), '', '', '', '')); continue
        if r is l: ratio = 'baseline'
        else: ratio = ratio_text(l['med'] / r['med'], r['peak_bytes'] / max(l['peak_bytes'], 1)) if 'med' in l else ''
        note = f"loss diff vs lightly {abs(c['ours'] - c['lightly']):.1e}" if r is o and 'ours' in c else ''
        rows.append((what, name, f"{r['med'] * 1e3:.1f} ms", f"{r['peak_bytes'] / scale:.2f} {unit}", ratio, '', note))
    return rows


def loader_rows(res: dict) -> list:
    what = f"{res['data_path']} ({res['n_files']} files), {res['n_images']} images, batch {res['batch_size']}"
    rows = [(what, f"{r['path']} [workers {r['workers']}]", f"{r['img_s']:.0f} img/s", '', '', '',
             f"{r['img_s_per_worker']:.0f} img/s/worker" if r['img_s_per_worker'] else '') for r in res['rows']]
    if res['device_path'] != 'cuda':
        why = 'no CUDA device' + (': the same batched code ran on the CPU, rows above' if res['device_path'] else '')
        rows.append((what, 'GPU: decode_jpeg(device=cuda) + v2 ops', na(why), '', '', '', ''))
    return rows


ROWS = dict(mim=mim_rows, vqkd=vqkd_rows, quantizer=quantizer_rows, ibot=ibot_rows, loader=loader_rows)


def read_status(logdir: Path) -> dict:
    "part -> (exit code or 'skipped', wall s, limit s)."
    out = {}
    f = logdir/'status.tsv'
    for line in (f.read_text().splitlines() if f.is_file() else []):
        part, rc, wall, limit = line.split('\t')
        out[part] = (rc, float(wall), float(limit))
    return out


def status_text(rc: str, wall: float, limit: float) -> str:
    if rc == '0': return f'ok in {wall:.0f} s'
    if rc == 'skipped': return f'skipped: under {limit:.0f} s of the budget left'
    if rc in ('124', '137'): return f'TIMED OUT at {limit:.0f} s (killed; configs measured before are shown)'
    return f'FAILED (exit {rc}) after {wall:.0f} s'


def table(logdir: Path, gpu: str, peak_tflops: float, total_s: float | None) -> str:
    status = read_status(logdir)
    results = {p: last_result(logdir/f'{p}.log') for p in PARTS}
    first = next((r for r in results.values() if r), {})
    lines = [f"GPU: {gpu}",
             f"torch {first.get('torch', '?')}, CUDA {first.get('cuda', '?')}, "
             f"benchmarks ran on: {first.get('device_name', '?')}",
             f"MFU = FLOPs/image (FlopCounterMode) x img/s / {peak_tflops:g} TFLOP/s (dense bf16 peak; --peak-tflops)"
             + ("; host syncs in a step: CUDA's sync debug mode, one step after the timed ones (0 expected, as "
                "tests/test_host_syncs.py shows on CPU)" if first.get('device') == 'cuda' else ''),
             'parts: ' + '; '.join(f"{p} {status_text(*status[p]) if p in status else 'not run'}" for p in PARTS)
             + (f'; total {total_s:.0f} s' if total_s is not None else ''), '',
             '| part | what | configuration | result | peak memory | vs baseline | MFU | notes |',
             '|---|---|---|---|---|---|---|---|']
    for p, label in PARTS.items():
        res, st = results[p], status.get(p)
        try: rows = ROWS[p](res) if res else []
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e: rows = [('', '', na(f'unreadable RESULT: {e!r}'))]
        if not rows:
            why = 'not run' if st is None else status_text(*st)
            if st is not None and st[0] not in ('0', 'skipped'): why += f': {last_error(logdir/f"{p}.log")}'
            rows = [('', '', na(why))]
        for i, row in enumerate(rows):                 # part and `what` only where they change
            row = tuple(row) + ('',) * (7 - len(row))
            what = row[0] if i == 0 or row[0] != rows[i - 1][0] else ''
            lines.append('| ' + ' | '.join(cell(c) for c in (label if i == 0 else '', what) + row[1:]) + ' |')
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('logdir', type=Path)
    p.add_argument('--gpu', default='none (nvidia-smi not found)', help='nvidia-smi name, memory.total')
    p.add_argument('--peak-tflops', type=float, default=989.)
    p.add_argument('--total-s', type=float, default=None, help='wall seconds of the whole check')
    a = p.parse_args()
    if not a.logdir.is_dir(): p.error(f'log folder not found: {a.logdir}')
    print(table(a.logdir, a.gpu, a.peak_tflops, a.total_s))


if __name__ == '__main__':
    main()
