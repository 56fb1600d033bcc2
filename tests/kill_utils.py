"""Kill a training run mid-way, for the resume tests: the one place that starts, watches and SIGKILLs a run."""
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_checkpoint(task: str,            # 'module:TaskClass', e.g. 'beitv2_lab.task_vqkd:VQKDTask'
                          config: str,          # 'module:ConfigClass'
                          cfg: dict,            # the config's fields
                          out_dir,              # the run's out_dir
                          step: int,            # SIGKILL once this step's checkpoint exists
                          product: str,         # a file the finished run writes: must not exist yet at the kill
                          timeout: float = 300):
    "Run `run(Task(), Config(**cfg), out_dir=...)` in a subprocess and SIGKILL it right after checkpoint `step`."
    (tm, tc), (cm, cc) = task.split(':'), config.split(':')
    code = (f"from {tm} import {tc}; from {cm} import {cc}; from beitv2_lab.train import run; "
            f"run({tc}(), {cc}(**{cfg!r}), out_dir={str(out_dir)!r})")
    proc = subprocess.Popen([sys.executable, '-c', code])
    deadline, ckpt = time.time() + timeout, Path(out_dir)/'checkpoints'/f'step_{step:07d}'
    while not ckpt.exists():
        assert proc.poll() is None and time.time() < deadline, 'run ended or hung before its first checkpoint'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (Path(out_dir)/product).exists(), 'the run finished before it was killed'
