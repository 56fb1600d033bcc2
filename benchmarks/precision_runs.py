"""The default tokenizer notebook under each precision, one run after the other: wall time and results side by side.

What issue 13 asks an AMX host to show: `papermill nbs/train_vqkd.ipynb out.ipynb -p precision fp32` and the default
(`precision='auto'`: bf16 autocast where the CPU has AMX-BF16, fp32 elsewhere), measured one after the other on the
same machine, with the quality of both (cosine to the teacher, codebook utilisation over the last log window) and,
with `--seeds 0,1`, the run-to-run noise those differences are to be read against (the same precision, another seed).

    python benchmarks/precision_runs.py                          # fp32, then auto: ~10 min on 2 AVX2 cores
    python benchmarks/precision_runs.py --seeds 0,1              # and each again with seed 1: the noise
    python benchmarks/precision_runs.py -p steps 20 -p n_embedded 256   # a quick look (any notebook parameter)

Each run is a fresh `papermill` process (kernel start included, as a user runs it); wall time is the whole command.
Runs go to --out (default: a temporary folder, kept). The CPU's flags (`amx_bf16`, `avx512_bf16`) are printed first,
since they decide what 'auto' means. The last line is `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO/'benchmarks'))

from _bench import emit  # noqa: E402

KEYS = ('cos', 'utilisation', 'perplexity', 'img_per_s')


def run_one(notebook: Path, out: Path, precision: str, seed: int, params: list) -> dict:
    "One papermill run of `notebook` with `-p precision`, `-p seed` and `params`; its wall time and summary."
    name = f'{precision}_seed{seed}'
    cmd = [sys.executable, '-m', 'papermill', str(notebook), str(out/f'{name}.ipynb'), '-p', 'precision', precision,
           '-p', 'seed', str(seed), '-p', 'out_dir', str(out/name), '--no-progress-bar']
    for k, v in params: cmd += ['-p', k, v]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode: return dict(name=name, error=f'papermill exit {proc.returncode}: {proc.stderr.strip()[-600:]}')
    summary = json.loads((out/name/'summary.json').read_text())
    return dict(name=name, precision=precision, seed=seed, wall_s=wall, resolved=summary.get('precision'),
                steps=summary.get('steps'), **{k: summary.get(k) for k in KEYS})


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--precisions', default='fp32,auto', help="comma list, in the order run (first = baseline)")
    p.add_argument('--seeds', default='0', help='comma list; a second seed measures the run-to-run noise')
    p.add_argument('--notebook', default=str(REPO/'nbs'/'train_vqkd.ipynb'))
    p.add_argument('--out', default='', help='folder for the runs (default: a new temporary folder)')
    p.add_argument('-p', '--param', nargs=2, action='append', default=[], metavar=('NAME', 'VALUE'),
                   help='another notebook parameter, as papermill -p takes it')
    a = p.parse_args()
    precisions, seeds = a.precisions.split(','), [int(s) for s in a.seeds.split(',')]
    if any(k in ('precision', 'seed', 'out_dir') for k, _ in a.param): p.error('precision, seed and out_dir are set by this script')
    from beitv2_lab.core import cpu_flags
    flags = sorted(cpu_flags() & {'amx_bf16', 'amx_tile', 'avx512_bf16', 'avx512f', 'avx2'})
    out = Path(a.out or tempfile.mkdtemp(prefix='precision_runs_')); out.mkdir(parents=True, exist_ok=True)
    print(f'{Path(a.notebook).name} under {precisions}, seeds {seeds}, one after the other; CPU flags: {" ".join(flags) or "-"}; '
          f'extra parameters: {a.param or "none"}; runs in {out}')
    rows = []
    for seed in seeds:
        if rows and 'error' in rows[0]: break
        for precision in precisions:
            r = run_one(Path(a.notebook), out, precision, seed, a.param); rows.append(r)
            if 'error' in r:
                print(f"{r['name']:16s} {r['error']}")
                if len(rows) == 1: break                          # the baseline failed: the others would too
                continue
            print(f"{r['name']:16s} {r['wall_s']:7.1f} s  ran {r['resolved']:4s}  cos {r['cos']:.4f}  "
                  f"utilisation {r['utilisation']:5.2f}%  {r['img_per_s']:.1f} img/s (last window)", flush=True)
    base = rows[0] if 'error' not in rows[0] else None
    if base:
        print(f"\nagainst {base['name']}:")
        for r in rows[1:]:
            if 'error' in r: continue
            print(f"{r['name']:16s} speed x{base['wall_s'] / r['wall_s']:.2f} (wall)  cos {r['cos'] - base['cos']:+.4f}  "
                  f"utilisation {r['utilisation'] - base['utilisation']:+.2f} pp")
    emit('precision_runs', notebook=Path(a.notebook).name, cpu_flags=flags, params=a.param, runs=rows)


if __name__ == '__main__':
    main()
