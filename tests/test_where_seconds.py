"benchmarks/where_seconds.py: the comparison's runs, timed by part, on the embedded photos at a tiny size."
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'benchmarks'))
import where_seconds  # noqa: E402

from beitv2_lab.compare import CompareConfig, run_configs  # noqa: E402
from beitv2_lab.train import Built  # noqa: E402


def test_target_modules_are_the_frozen_helpers_and_an_ema_teacher():
    teacher, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model = torch.nn.Module(); model.teacher = teacher
    mods = where_seconds.target_modules(Built(model=model, frozen=dict(tokenizer=frozen, loss_fn=len)))
    assert mods == [frozen, teacher]
    assert where_seconds.target_modules(Built(model=torch.nn.Linear(2, 2))) == []


def test_a_stage_splits_into_data_target_and_model(tmp_path):
    cfg = CompareConfig(methods='hog', img_size=32, batch_size=4, out_dir=str(tmp_path))
    (stage, task, rcfg), = run_configs(cfg, 'hog', 0)
    r = where_seconds.profile_stage(task, rcfg, steps=6, skip=2, data_batches=2, out_dir=tmp_path/'hog')
    assert r['steps_timed'] == 3
    assert r['data_ms'] > 0 and r['target_ms'] > 0 and r['interval_ms'] > 0   # HOG is a frozen module: its forward is seen
    assert abs(r['data_ms'] + r['target_ms'] + r['model_ms'] - r['interval_ms']) < 1e-6
