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


def _load(path: str):
    import importlib
    module, name = path.split(':')
    return getattr(importlib.import_module(module), name)


def resume_matches_uninterrupted(task: str,            # 'module:TaskClass'
                                 config: str,          # 'module:ConfigClass'
                                 cfg: dict,            # the config's fields
                                 root,                 # runs go to root/'full' and root/'cut'
                                 step: int,            # the kill comes right after this step's checkpoint
                                 products: tuple,      # files the finished run writes; compared tensor by tensor
                                 killed_cfg: dict | None = None,  # the killed and resumed run's fields (default: cfg)
                                ) -> tuple[Path, Path]:
    "A run SIGKILLed after checkpoint `step` and resumed ends bit-identical to an uninterrupted one: its `products` and metrics."
    import torch
    from safetensors.torch import load_file
    from beitv2_lab.train import read_metrics, run
    Task, Config = _load(task), _load(config)
    full, cut, killed = Path(root)/'full', Path(root)/'cut', killed_cfg or cfg
    run(Task(), Config(**cfg), out_dir=str(full))
    kill_after_checkpoint(task, config, killed, cut, step, products[0])
    run(Task(), Config(**killed), out_dir=str(cut))
    for f in products:
        a, b = load_file(full/f), load_file(cut/f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    strip = lambda rows: [{k: v for k, v in r.items() if k != 'img_per_s'} for r in rows]
    assert strip(read_metrics(full)) == strip(read_metrics(cut))
    return full, cut
