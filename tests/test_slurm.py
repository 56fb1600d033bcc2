"""SLURM without SLURM: `slurm_launch_args` reads a job's environment, the harness hands what it returns to `launch`,
and scripts/slurm/beitv2_lab.sbatch runs papermill once per node with it (fake `scontrol`, `srun` and `papermill`
executables on PATH stand in for the cluster's)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from beitv2_lab import train
from beitv2_lab.distrib import scontrol_hostnames, slurm_launch_args
from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO/'scripts'/'slurm'/'beitv2_lab.sbatch'
JOB = dict(SLURM_JOB_ID='4242', SLURM_JOB_NUM_NODES='2', SLURM_JOB_NODELIST='gpu[07-08]')

# `scontrol show hostnames LIST` for the one node list these tests use; any other list is an error, as in SLURM
SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: unexpected $*" >&2; exit 2; }
case "$3" in 'gpu[07-08]') printf 'gpu07\\ngpu08\\n' ;; *) echo "scontrol: error: invalid node list $3" >&2; exit 1 ;; esac
"""
# srun: record its options, then run the command once per node of the job with that node's SLURM_NODEID
SRUN = """#!/bin/bash
opts=(); while [[ "$1" == --* ]]; do opts+=("$1"); shift; done
echo "${opts[*]}" > "$FAKE_LOG/srun_options"
for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do SLURM_NODEID=$n "$@" || exit $?; done
"""
# papermill: write the arguments it got, one per line, per node
PAPERMILL = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/papermill_node_$SLURM_NODEID"
"""


@pytest.fixture
def fake_bin(tmp_path):
    "A folder holding the fake scontrol, srun and papermill, and the folder where they log."
    bin_dir, log = tmp_path/'bin', tmp_path/'log'
    bin_dir.mkdir(); log.mkdir()
    for name, text in [('scontrol', SCONTROL), ('srun', SRUN), ('papermill', PAPERMILL)]:
        (bin_dir/name).write_text(text)
        (bin_dir/name).chmod((bin_dir/name).stat().st_mode | stat.S_IXUSR)
    return bin_dir, log


def test_launch_args_from_the_job_environment(fake_bin, monkeypatch):
    "The node count, the first host (scontrol's expansion) with the port, the job id; clear errors otherwise."
    monkeypatch.setenv('PATH', f'{fake_bin[0]}{os.pathsep}{os.environ["PATH"]}')
    assert scontrol_hostnames('gpu[07-08]') == ['gpu07', 'gpu08']
    assert slurm_launch_args(JOB) == dict(nnodes=2, rdzv_endpoint='gpu07:29400', run_id='4242')
    assert slurm_launch_args(JOB, port=31000)['rdzv_endpoint'] == 'gpu07:31000'
    with pytest.raises(RuntimeError, match=r"scontrol show hostnames 'gpu\[\]' failed: scontrol: error: invalid node list"):
        slurm_launch_args(JOB | dict(SLURM_JOB_NODELIST='gpu[]'))
    with pytest.raises(ValueError, match='environ: SLURM_JOB_NODELIST not set; call this inside a SLURM job'):
        slurm_launch_args({k: v for k, v in JOB.items() if k != 'SLURM_JOB_NODELIST'})
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST: 'gpu\\[07-08\\]' names 2 hosts but SLURM_JOB_NUM_NODES is 3"):
        slurm_launch_args(JOB | dict(SLURM_JOB_NUM_NODES='3'))
    monkeypatch.setenv('PATH', str(fake_bin[1]))                       # no scontrol anywhere
    with pytest.raises(RuntimeError, match='scontrol not found'): slurm_launch_args(JOB)


def test_the_harness_hands_them_to_launch(monkeypatch):
    "A run configured from a SLURM job calls `launch` with the job's nnodes, rendezvous and run id."
    got = {}
    def fake_launch(fn, *args, **kwargs): got.update(kwargs); return {'launched': True}
    monkeypatch.setattr(train, 'launch', fake_launch)
    job = slurm_launch_args(JOB, hostnames=lambda nodelist: ['gpu07', 'gpu08'])
    assert train.run(VQKDTask(), VQKDConfig(**job, nproc_per_node=8)) == {'launched': True}
    assert got == dict(nproc_per_node=8, nnodes=2, rdzv_endpoint='gpu07:29400', run_id='4242', max_restarts=0)


def run_sbatch(fake_bin, tmp_path, *args, **env):
    "Run the sbatch script as a job of `JOB` (updated by `env`) would, with the fake cluster commands."
    bin_dir, log = fake_bin
    outside = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'NPROC_PER_NODE', 'RDZV_PORT', 'OUT'))}
    env = {**outside, **JOB, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'FAKE_LOG': str(log),
           'PYTHON': sys.executable, 'OUT': str(tmp_path/'out'), **env}
    return subprocess.run(['bash', str(SBATCH), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_sbatch_runs_papermill_on_every_node(fake_bin, tmp_path):
    "One papermill per node, each with the user's arguments, the job's launch arguments and its own output notebook."
    r = run_sbatch(fake_bin, tmp_path, 'nbs/train_vqkd.ipynb', '-p', 'steps', '2000', '-p', 'out_dir', 'runs/my run',
                   SLURM_GPUS_ON_NODE='4')
    assert r.returncode == 0, r.stderr
    log = fake_bin[1]
    assert (log/'srun_options').read_text().split() == ['--nodes=2', '--ntasks-per-node=1', '--kill-on-bad-exit=1']
    for node in (0, 1):
        argv = (log/f'papermill_node_{node}').read_text().splitlines()
        assert argv == ['nbs/train_vqkd.ipynb', f'{tmp_path}/out/node_{node}.ipynb', '-p', 'nnodes', '2',
                        '-p', 'rdzv_endpoint', 'gpu07:29400', '-p', 'run_id', '4242', '-p', 'nproc_per_node', '4',
                        '-p', 'steps', '2000', '-p', 'out_dir', 'runs/my run'], argv
    assert 'on 2 nodes x 4 workers' in r.stdout


def test_sbatch_stops_before_srun_on_a_bad_job(fake_bin, tmp_path):
    "A job whose node list does not match its node count fails with the library's message; no node starts."
    r = run_sbatch(fake_bin, tmp_path, 'nbs/train_vqkd.ipynb', SLURM_JOB_NUM_NODES='3', NPROC_PER_NODE='2', RDZV_PORT='31000')
    assert r.returncode != 0 and 'names 2 hosts but SLURM_JOB_NUM_NODES is 3' in r.stderr, r.stderr
    assert not list(fake_bin[1].iterdir())
    r = run_sbatch(fake_bin, tmp_path)
    assert r.returncode != 0 and 'usage: sbatch scripts/slurm/beitv2_lab.sbatch NOTEBOOK' in r.stderr, r.stderr
