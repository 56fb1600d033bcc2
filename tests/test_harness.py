"""End-to-end tests of the training harness (`beitv2_lab.train`, `beitv2_lab.distrib`) through the real VQ-KD task:
parameter checking in the run notebooks, pickle-free resume, two nodes on one machine, an elastic restart after a
worker is killed, and a non-finite loss."""
import ast
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from beitv2_lab.distrib import free_port
from beitv2_lab.task_mim import MIMConfig
from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
from beitv2_lab.train import describe_summary, latest_checkpoint, read_metrics, run
from nb_utils import REPO, run_notebook

TINY = dict(teacher='hog', model='vqkd_tiny', img_size=32, teacher_size=32, codebook_size=64, code_dim=8, batch_size=8,
            warmup_steps=2, n_embedded=256, num_workers=0, progress=False, knn_images=40)   # a small online k-NN split: tests are not about it
DDP = dict(TINY, steps=24, ckpt_every=4, log_every=4)      # long enough after step 4 to kill a worker mid-run


def same_weights(a, b) -> bool:
    "Whether two safetensors files hold the same tensor names and bit-identical tensors."
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)

def strip_speed(rows): return [{k: v for k, v in r.items() if k != 'img_per_s'} for r in rows]


class NodeThreads(VQKDTask):
    """The VQ-KD task with as many CPU threads per worker as a node running one worker gets (`os.cpu_count()`, what
    the loop's `_set_cpu_threads` gives it). CPU kernels split their sums by thread count, so a 2-worker node (half the
    threads each) differs from two 1-worker nodes in the last bits; with the thread count matched they are identical."""
    def build(self, cfg, device):
        torch.set_num_threads(os.cpu_count() or 1)        # after the loop set its own count, before any compute
        return super().build(cfg, device)

def passive_env() -> dict:
    """This environment with OpenMP threads that sleep rather than spin while they wait: `NodeThreads` puts more
    threads than cores on a small test host, and spinning threads then slow each other down many times over
    (the wait policy does not change any result)."""
    return dict(os.environ, OMP_WAIT_POLICY='PASSIVE')

@pytest.fixture(scope='module')
def ddp_reference(tmp_path_factory):
    "An uninterrupted single-node 2-worker gloo run of `DDP` (`NodeThreads`): the out_dir."
    out, saved = tmp_path_factory.mktemp('ddp_reference'), dict(os.environ)
    os.environ.update(passive_env())                  # the spawned workers inherit it
    try: run(NodeThreads(), VQKDConfig(**DDP), nproc_per_node=2, out_dir=str(out))
    finally: os.environ.clear(); os.environ.update(saved)
    return out


# --- 1. a misspelt notebook parameter ------------------------------------------------------------------------------

def test_typo_parameter_fails_naming_the_closest_field(tmp_path):
    "A misspelt papermill parameter stops the notebook before training, naming the closest field."
    from papermill.exceptions import PapermillExecutionError
    rdir = tmp_path/'run'
    with pytest.raises(PapermillExecutionError) as e:
        run_notebook('train_vqkd', tmp_path/'out.ipynb', **TINY, steps=4, out_dir=str(rdir), stpes=3)
    assert e.value.ename == 'ValueError', e.value.ename
    assert "'stpes'" in e.value.evalue and "did you mean 'steps'" in e.value.evalue, e.value.evalue
    assert not (rdir/'tokenizer.safetensors').exists() and not (rdir/'checkpoints').exists()


# --- 2. notebook parameters == config fields -----------------------------------------------------------------------

def parameter_cell(nb_path) -> dict:
    "`name = literal` assignments of the notebook's cell tagged `parameters`."
    nb = json.loads(Path(nb_path).read_text())
    cells = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'{nb_path}: expected one cell tagged parameters, found {len(cells)}'
    out = {}
    for node in ast.parse(''.join(cells[0]['source'])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f'{nb_path}: not a flat `name = literal` line: {ast.unparse(node)}'
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out

def config_mismatches(params: dict, cls) -> list[str]:
    "How a parameters dict differs from the fields and defaults of dataclass `cls` (empty: they match)."
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    bad = [f'{k}: not a field of {cls.__name__}' for k in params.keys() - defaults.keys()]
    bad += [f'{k}: field missing from the notebook' for k in defaults.keys() - params.keys()]
    bad += [f'{k}: notebook {params[k]!r} != default {defaults[k]!r}' for k in params.keys() & defaults.keys()
            if params[k] != defaults[k] or type(params[k]) is not type(defaults[k])]
    return sorted(bad)

def _run_notebooks():
    from beitv2_lab.compare import CompareConfig
    from beitv2_lab.task_dvae import DVAEConfig
    from beitv2_lab.task_ibot import IBOTConfig
    from beitv2_lab.task_pixdec import PixDecConfig
    return [('train_vqkd.ipynb', VQKDConfig), ('pretrain_mim.ipynb', MIMConfig), ('train_dvae.ipynb', DVAEConfig),
            ('pretrain_ibot.ipynb', IBOTConfig), ('compare_targets.ipynb', CompareConfig), ('train_pixdec.ipynb', PixDecConfig)]

@pytest.mark.parametrize('nb, cls', _run_notebooks())
def test_parameter_cells_match_configs(nb, cls):
    "A run notebook's parameters are exactly its config's fields, each with the field's default."
    params = parameter_cell(REPO/'nbs'/nb)
    assert config_mismatches(params, cls) == []
    import papermill as pm                       # papermill's own parser sees every parameter too (it skips a line whose comment has '=')
    assert set(pm.inspect_notebook(str(REPO/'nbs'/nb))) == {f.name for f in dataclasses.fields(cls)}
    # the comparison can fail: a changed default, a stray name and a missing field are each caught
    assert config_mismatches({**params, 'steps': params['steps'] + 1}, cls) == [
        f"steps: notebook {params['steps'] + 1} != default {params['steps']}"]
    assert config_mismatches({**params, 'stpes': 3}, cls) == [f'stpes: not a field of {cls.__name__}']
    assert config_mismatches({k: v for k, v in params.items() if k != 'out_dir'}, cls) == ['out_dir: field missing from the notebook']
    assert config_mismatches({**params, 'compile': 0}, cls) != []        # 0 == False, but not the same literal


# --- 3. resume never unpickles ---------------------------------------------------------------------------------------

class _Touch:
    "Unpickling this creates the file `path` (stands for arbitrary code a planted pickle could run)."
    def __init__(self, path): self.path = Path(path)
    def __reduce__(self): return (Path.touch, (self.path,))

def test_resume_refuses_a_planted_pickle(tmp_path):
    "A pickle planted in a checkpoint (as its optimizer file and as *.pt files) is refused by name, never unpickled."
    probe, marker = tmp_path/'probe_marker', tmp_path/'marker'
    pickle.loads(pickle.dumps(_Touch(probe)))
    assert probe.exists(), 'the payload must run code when unpickled, or this test proves nothing'
    rdir = tmp_path/'run'
    run(VQKDTask(), VQKDConfig(**TINY), steps=4, ckpt_every=2, log_every=2, out_dir=str(rdir))
    ckpt = latest_checkpoint(rdir)
    assert ckpt.name == 'step_0000004'
    payload = pickle.dumps(_Touch(marker))
    for name in ('optimizer.safetensors', 'state.pt', 'optimizer.pt'): (ckpt/name).write_bytes(payload)
    with pytest.raises(ValueError) as e:
        run(VQKDTask(), VQKDConfig(**TINY), steps=6, ckpt_every=2, log_every=2, out_dir=str(rdir), resume='auto')
    assert str(ckpt/'optimizer.safetensors') in str(e.value), str(e.value)
    assert not marker.exists(), 'resume unpickled a planted file'
    assert latest_checkpoint(rdir) == ckpt and not (rdir/'checkpoints'/'step_0000006').exists()


# --- 4. two nodes on localhost ----------------------------------------------------------------------------------------

def papermill_cmd(out_nb, params: dict) -> list[str]:
    cmd = [sys.executable, '-m', 'papermill', str(REPO/'nbs'/'train_vqkd.ipynb'), str(out_nb), '-k', 'python3', '--no-progress-bar']
    for k, v in params.items(): cmd += ['-p', k, str(v)]
    return cmd

def notebook_text_and_errors(path) -> tuple[str, list]:
    "All stream/text outputs of an executed notebook joined, and its error outputs."
    nb = json.loads(Path(path).read_text())
    outs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    text = ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) for o in outs)
    return text, [o for o in outs if o.get('output_type') == 'error']

@pytest.mark.serial
def test_two_nodes_on_localhost_one_worker_killed(tmp_path, ddp_reference):
    """The same papermill command on two 'nodes' (1 worker each, `max_restarts 1`), and node 1's worker SIGKILLed after
    the first checkpoint: its agent restarts it, node 0's agent restarts its healthy worker to admit the new round
    (their restart counts then differ, 1 and 0: `launch`'s fresh store per rendezvous round lets the group meet
    anyway), the group resumes from the latest checkpoint (the checkpoints written before the kill are never written
    again) and trains bit-identically to one uninterrupted node with 2 workers (at the same CPU threads per worker,
    see `NodeThreads`); both notebooks finish, each saying what its node did."""
    rdir = tmp_path/'run'
    params = dict(DDP, nproc_per_node=1, nnodes=2, rdzv_endpoint=f'127.0.0.1:{free_port()}', run_id='two-nodes-test',
                  max_restarts=1, keep_checkpoints=6, out_dir=rdir)
    env = dict(passive_env(), BEITV2_LAB_CONNECT_TIMEOUT='30')
    env.pop('TORCH_DISABLE_SHARE_RDZV_TCP_STORE', None)               # launch's own mode: a fresh store per round
    procs = []
    for k in range(2):
        log = open(tmp_path/f'node{k}.log', 'w')
        procs.append(subprocess.Popen(papermill_cmd(tmp_path/f'out_node{k}.ipynb', params), cwd=tmp_path, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True, env=env))
    try:
        deadline = time.time() + 300
        while not (rdir/'checkpoints'/'step_0000004').exists():
            assert all(p.poll() is None for p in procs) and time.time() < deadline, 'a node ended or hung before the first checkpoint'
            time.sleep(0.02)
        ws = [worker_pids(p.pid) for p in procs]
        assert [len(w) for w in ws] == [1, 1], ws
        os.kill(ws[1][0], signal.SIGKILL)
        before = {c.name: c.stat().st_mtime_ns for c in (rdir/'checkpoints').iterdir() if c.name.startswith('step_')}
        assert not (rdir/'tokenizer.safetensors').exists(), 'the run finished before the worker was killed'
        for p in procs: p.wait(timeout=max(1, deadline - time.time()))
    finally:
        for p in procs:
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    logs = [(tmp_path/f'node{k}.log').read_text() for k in range(2)]
    for k, p in enumerate(procs): assert p.returncode == 0, f'node {k} exited {p.returncode}:\n{logs[k][-4000:]}'
    assert not any('SignalException' in t for t in logs), 'torch elastic was signalled at teardown'
    after = {c.name: c.stat().st_mtime_ns for c in (rdir/'checkpoints').iterdir() if c.name.startswith('step_')}
    assert 'step_0000004' in before and {k: after.get(k) for k in before} == before, (before, after)   # resumed, not redone
    assert sorted(after)[-1] == 'step_0000024', after
    lines = []
    for k in range(2):
        text, errors = notebook_text_and_errors(tmp_path/f'out_node{k}.ipynb')
        assert errors == [], f'node {k}: {errors}'
        lines += [l for l in text.splitlines() if ' ran ranks ' in l]
    assert sorted(lines) == sorted([describe_summary(dict(node_rank=0, ranks=[0], world_size=2, has_rank0=True, out_dir=str(rdir))),
                                    describe_summary(dict(node_rank=1, ranks=[1], world_size=2, has_rank0=False, out_dir=str(rdir)))])
    assert any(l.endswith(f'results in {rdir}') for l in lines)
    assert any('rank 0 (on another node)' in l for l in lines)
    assert same_weights(rdir/'tokenizer.safetensors', ddp_reference/'tokenizer.safetensors')
    assert strip_speed(read_metrics(rdir)) == strip_speed(read_metrics(ddp_reference))


# --- 5. a killed worker: elastic restart and exact resume -------------------------------------------------------------

def children(pid: int) -> list[int]:
    "Direct child processes of `pid` (from /proc/*/stat)."
    out = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError): continue
        if int(fields[1]) == pid: out.append(int(stat.parent.name))
    return out

def cmdline(pid: int) -> str:
    try: return Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode()
    except OSError: return ''

def worker_pids(pid: int) -> list[int]:
    "The elastic workers among the descendants of `pid`: multiprocessing spawn children, not the resource tracker."
    todo, found = [pid], []
    while todo:
        for c in children(todo.pop()):
            todo.append(c)
            cmd = cmdline(c)
            if 'spawn_main' in cmd and 'resource_tracker' not in cmd: found.append(c)
    return sorted(found)

class ResumeRecorder(NodeThreads):
    "`NodeThreads`, plus a line in `out_dir/resumed.txt`: the worker, the checkpoint it resumes from, its store mode."
    def build(self, cfg, device):
        self.out_dir = Path(cfg.out_dir); return super().build(cfg, device)
    def load_extra_state(self, built, tensors):              # called by the loop only when it resumes
        from beitv2_lab.distrib import get_rank
        shared = os.environ.get('TORCHELASTIC_USE_AGENT_STORE')              # 'True': torch elastic's shared store
        with open(self.out_dir/'resumed.txt', 'a') as f: f.write(f'rank {get_rank()} {latest_checkpoint(self.out_dir).name} {shared}\n')
        super().load_extra_state(built, tensors)

@pytest.mark.serial
def test_worker_killed_restarts_and_resumes_bit_identical(tmp_path, ddp_reference):
    """SIGKILL one of 2 workers of one node after the first checkpoint: torch elastic (max_restarts=1) restarts the
    group, which resumes from the latest checkpoint and ends bit-identical to the uninterrupted run. One restart must
    be enough. Here under torch's shared store (as under a plain `torchrun`): the restarted group meets under a prefix
    per restart; without it, it read the killed group's gloo addresses and never connected. `launch`'s own mode, a
    fresh store per rendezvous round, is tested on two nodes above (the harder case: the agents' restart counts differ)."""
    rdir = tmp_path/'run'
    code = (f"import sys, logging; sys.path.insert(0, {str(REPO/'tests')!r}); logging.basicConfig(level=logging.INFO); "
            f"from test_harness import ResumeRecorder; from beitv2_lab.task_vqkd import VQKDConfig; from beitv2_lab.train import run; "
            f"run(ResumeRecorder(), VQKDConfig(**{DDP!r}), nproc_per_node=2, max_restarts=1, out_dir={str(rdir)!r})")
    env = dict(passive_env(), BEITV2_LAB_CONNECT_TIMEOUT='30')
    env['TORCH_DISABLE_SHARE_RDZV_TCP_STORE'] = '0'                  # torch's default, as under a plain torchrun
    log = open(tmp_path/'launcher.log', 'w')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    try:
        deadline = time.time() + 300                      # generous: a loaded 2-core CI machine starts 2 workers slowly
        while not (rdir/'checkpoints'/'step_0000004').exists():
            assert proc.poll() is None and time.time() < deadline, 'run ended or hung before its first checkpoint'
            time.sleep(0.02)
        workers = worker_pids(proc.pid)
        assert len(workers) == 2, f'expected 2 workers, found {workers}: {[cmdline(w) for w in workers]}'
        os.kill(workers[0], signal.SIGKILL)
        assert not (rdir/'tokenizer.safetensors').exists(), 'the run finished before the worker was killed'
        proc.wait(timeout=240)                            # the restart and 20 more steps: ~1 min where it works
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    text = (tmp_path/'launcher.log').read_text()
    assert proc.returncode == 0, text[-4000:]
    resumed = sorted((rdir/'resumed.txt').read_text().splitlines())
    assert [l.split()[1] for l in resumed] == ['0', '1'], resumed        # both workers of the new group resumed, once
    assert {l.split()[3] for l in resumed} == {'True'}, resumed           # in torch's shared store
    assert len({l.split()[2] for l in resumed}) == 1 and 'step_0000004' <= resumed[0].split()[2] < 'step_0000024', resumed
    assert same_weights(rdir/'tokenizer.safetensors', ddp_reference/'tokenizer.safetensors')
    assert strip_speed(read_metrics(rdir)) == strip_speed(read_metrics(ddp_reference))


# --- 6. a non-finite loss --------------------------------------------------------------------------------------------

class NaNAtStep5(VQKDTask):
    "The real VQ-KD task whose loss turns NaN at step 5; keeps the bytes of the checkpoint folder as they were then."
    def step(self, built, batch, step):
        res = super().step(built, batch, step)
        if step == 5:
            self.before = {p.name: p.read_bytes() for p in sorted(self.ckpt.iterdir())}
            res['loss'] = res['loss'] * float('nan')
        return res

def test_non_finite_loss_keeps_last_checkpoint(tmp_path):
    "A NaN loss at step 5 stops the run naming the step; the step-4 checkpoint is left byte for byte, nothing is written after."
    rdir = tmp_path/'run'
    task = NaNAtStep5()
    task.ckpt = rdir/'checkpoints'/'step_0000004'
    with pytest.raises(FloatingPointError) as e:
        run(task, VQKDConfig(**TINY), steps=8, ckpt_every=4, log_every=2, out_dir=str(rdir))
    msg = str(e.value)
    assert 'non-finite loss' in msg and 'at step 5' in msg and str(task.ckpt) in msg, msg
    assert sorted(task.before) == ['config.json', 'model.safetensors', 'optimizer.safetensors', 'state.safetensors']
    assert {p.name: p.read_bytes() for p in sorted(task.ckpt.iterdir())} == task.before
    assert sorted(p.name for p in (rdir/'checkpoints').iterdir()) == ['step_0000004']
    assert not (rdir/'tokenizer.safetensors').exists() and not (rdir/'summary.json').exists()

