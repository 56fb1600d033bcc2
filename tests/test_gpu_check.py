"""The GPU check (benchmarks/gpu_check.sh) on a CPU: `--smoke` runs every part's code path at tiny shapes and prints
one markdown table with a figure for every part; the workers of the full (GPU) run get every flag they need."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'benchmarks'))
PARTS = ('MIM step', 'VQ-KD step', 'quantizer step', 'iBOT loss step', 'loader')
FIGURE = re.compile(r'^\d+(\.\d+)? (img/s|ms)$')
COLUMNS = ['part', 'what', 'configuration', 'result', 'peak memory', 'vs baseline', 'MFU', 'notes']


def parse_table(text: str) -> dict:
    "part label -> list of rows (dicts by column) of the one markdown table in `text`."
    lines = [l for l in text.splitlines() if l.startswith('|')]
    assert lines and [c.strip() for c in lines[0].strip('|').split('|')] == COLUMNS, text[-2000:]
    parts, part = {}, None
    for line in lines[2:]:                                   # after the header and the |---| line
        row = dict(zip(COLUMNS, (c.strip() for c in line.strip().strip('|').split('|'))))
        part = row['part'] or part
        parts.setdefault(part, []).append(row)
    return parts


PEERS = ('lightly', 'vector_quantize_pytorch')   # the peer libraries the benchmarks measure against
PEER_ROWS = ('lightly', 'vector-quantize-pytorch')  # their rows in the table


@pytest.fixture(scope='module', params=['peers installed', 'peers missing'])
def smoke(request, tmp_path_factory):
    """The smoke check, as set up by the README, and again with every peer made unimportable (a machine without them):
    then only the two parts that measure a peer run (`--parts quantizer,ibot`)."""
    logs, env = tmp_path_factory.mktemp('gpu_check'), dict(os.environ)
    if request.param == 'peers missing':
        shim = tmp_path_factory.mktemp('no_peers')
        for name in PEERS:                    # a package that shadows the installed one and fails to import, as a missing one does
            (shim/name).mkdir(); (shim/name/'__init__.py').write_text(f'raise ImportError("{name} hidden by the test")')
        env['PYTHONPATH'] = f"{shim}{os.pathsep}{env.get('PYTHONPATH', '')}"
    parts = ['--parts', 'quantizer,ibot'] if request.param == 'peers missing' else []   # the parts with a peer
    out = subprocess.run(['bash', str(REPO/'benchmarks'/'gpu_check.sh'), '--smoke', '--logs', str(logs), *parts],
                         capture_output=True, text=True, timeout=420, cwd=REPO, env=env)
    return out, logs, request.param


def test_smoke_table_has_a_figure_for_every_part(smoke):
    "Every part that ran has a figure in every row (or says why a CPU cannot give one); the parts not chosen say 'not run'."
    out, logs, peers = smoke
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (logs/'table.md').read_text().strip() in out.stdout
    parts = parse_table(out.stdout)
    assert list(parts) == list(PARTS)
    ran = PARTS if peers == 'peers installed' else ('quantizer step', 'iBOT loss step')   # peers missing: --parts quantizer,ibot
    for part, rows in parts.items():
        if part not in ran:
            assert [r['result'] for r in rows] == ['n/a (not run)'], f'{part}: {rows}'
            continue
        for row in rows:
            res, conf = row['result'], row['configuration']
            missing_peer = peers == 'peers missing' and conf in PEER_ROWS
            if FIGURE.match(res) and not missing_peer: continue
            # the only figures a CPU cannot give: the GPU decode path, and a peer's where it is missing
            allowed = conf.startswith('GPU:') or (missing_peer and 'not installed' in res)
            assert allowed and re.match(r'^n/a \(.+\)$', res), f'{part}: {row}'
    confs = lambda p: [r['configuration'] for r in parts[p]]
    assert confs('quantizer step') == ['ours (beitv2_lab)', 'vector-quantize-pytorch']
    assert confs('iBOT loss step') == ['ours (beitv2_lab.ibot)', 'lightly']
    assert 'quantizer ok' in out.stdout and 'ibot ok' in out.stdout
    if peers == 'peers missing':
        assert 'parts: mim not run' in out.stdout and 'loader not run' in out.stdout
        return
    assert confs('MIM step') == ['fp32 eager', 'bf16 eager', 'bf16 + compile']
    assert confs('VQ-KD step') == ['fp32 eager', 'bf16 eager', 'bf16 + compile', 'no grad, fp32']
    assert any(c.startswith('ImageFolder + TwoViewTransform loader') for c in confs('loader'))
    assert any(c.startswith('cpu batched tensors: read files + decode_jpeg') for c in confs('loader'))
    for p in ('MIM step', 'VQ-KD step'):                     # compiled configs: their first step is the compile,
        for r in parts[p]:                                   # won back after so many steps against bf16 eager
            tail = r'; (pays back after \d+ steps|no faster than eager: never pays back)' if 'compile' in r['configuration'] else ''
            assert re.match(rf'^first step \d+\.\d s{tail}$', r['notes']), r
    assert 'parts: mim ok' in out.stdout and 'loader ok' in out.stdout


def test_unknown_part_is_refused():
    out = subprocess.run(['bash', str(REPO/'benchmarks'/'gpu_check.sh'), '--smoke', '--parts', 'mim,warp'],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and 'unknown part warp' in out.stderr


@pytest.mark.parametrize('name,flags', [
    ('mim_step', '--device cpu --img-size 32 --batch-size 2 --flop-batch 1 --repeats 1 --warmup 1 --threads 1 '
                 '--compile-backend eager --configs fp32,bf16-compile --timeout 9 --peak-tflops 500'),
    ('vqkd_step', '--device cpu --img-size 32 --teacher timm:test_vit --teacher-weights random --teacher-size 48 '
                  '--batch-size 2 --encode-batch 3 --encode-precision fp32 --flop-batch 1 --repeats 1 --warmup 1 '
                  '--threads 1 --compile-backend aot_eager --configs fp32,encode'),
    ('ibot_step', '--device cpu --batch-size 2 --n-tokens 16 --out-dim 64 --embed-dim 32 --n-local 2 --repeats 1 '
                  '--warmup 1 --threads 1 --timeout 9')])
def test_worker_gets_every_flag(name, flags):
    "What a fresh worker process parses from its command line equals the parent's settings, except parent-only ones."
    import importlib
    from _bench import worker_argv
    mod = importlib.import_module(name)
    a = mod.parse_args(flags.split())
    b = mod.parse_args(worker_argv(a, 'fp32', mod.WORKER_KEYS))
    assert b.worker == 'fp32'
    parent_only = {'configs', 'timeout', 'compile_timeout', 'peak_tflops', 'inline', 'worker'}
    assert {k for k in vars(a) if vars(a)[k] != vars(b)[k]} <= parent_only


@pytest.mark.parametrize('smoke', ['peers installed'], indirect=True)   # it needs the mim and vqkd logs of a full smoke
def test_table_names_what_did_not_run(smoke, tmp_path):
    "A part killed mid-way keeps the configurations it measured; a failed part shows its error; a skipped one says so."
    from gpu_table import table
    _, logs, _ = smoke
    mim = (logs/'mim.log').read_text().splitlines()
    first = next(i for i, l in enumerate(mim) if l.startswith('RESULT ') and '"fp32": {' in l)
    (tmp_path/'mim.log').write_text('\n'.join(mim[:first + 1]))                 # killed after fp32
    (tmp_path/'ibot.log').write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'fastcore'\n")
    for p in ('vqkd', 'quantizer'): (tmp_path/f'{p}.log').write_text((logs/f'{p}.log').read_text())
    (tmp_path/'status.tsv').write_text('mim\t124\t190.0\t190\nvqkd\t0\t30.0\t190\nquantizer\t0\t9.0\t45\n'
                                       'ibot\t1\t3.5\t45\nloader\tskipped\t0\t12\n')
    out = table(tmp_path, 'test GPU, 80 GiB', 989., 400.)
    parts = parse_table(out)
    assert list(parts) == list(PARTS)
    assert FIGURE.match(parts['MIM step'][0]['result'])
    assert [r['result'] for r in parts['MIM step'][1:]] == ['n/a (not measured: the part stopped before it)'] * 2
    assert parts['iBOT loss step'][0]['result'] == \
        "n/a (FAILED (exit 1) after 4 s: ModuleNotFoundError: No module named 'fastcore')"
    assert parts['loader'][0]['result'] == 'n/a (skipped: under 12 s of the budget left)'
    assert 'mim TIMED OUT at 190 s' in out and 'GPU: test GPU, 80 GiB' in out
