"""End-to-end tests of VQ-KD training: the papermill template, 2-process DDP on gloo, and resume after a kill."""

import pytest

from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
from beitv2_lab.train import load_checkpoint, read_metrics, run
from nb_utils import n_images, run_notebook
from kill_utils import resume_matches_uninterrupted

TINY = dict(teacher='hog', model='vqkd_tiny', img_size=32, teacher_size=32, codebook_size=64, code_dim=8, batch_size=8,
            warmup_steps=2, n_embedded=256, num_workers=0, progress=False, knn_images=40)


def test_papermill_template(tmp_path):
    "The training notebook runs end to end through papermill with tiny parameters and plots at the end."
    rdir = tmp_path/'run'
    cells = run_notebook('train_vqkd', tmp_path/'out.ipynb', **TINY, steps=6, log_every=2, ckpt_every=3, out_dir=str(rdir))
    assert (rdir/'tokenizer.safetensors').exists()
    assert [r['step'] for r in read_metrics(rdir)] == [2, 4, 6]
    assert n_images(cells) >= 3, 'expected the curves, the usage histogram and the code patches'


def test_ddp_two_processes_keep_codebooks_identical(tmp_path):
    """2 gloo workers with different data shards: the run checks at every step that all ranks hold a bitwise
    identical codebook (after k-means init, after dead-code restarts, at the end) and fails otherwise."""
    rdir = tmp_path/'ddp'
    summary = run(VQKDTask(), VQKDConfig(**TINY), steps=6, log_every=1, ckpt_every=6, dead_code_threshold=0.5,
                       nproc_per_node=2, out_dir=str(rdir))
    rows = read_metrics(rdir)
    assert [r['step'] for r in rows] == list(range(1, 7))
    assert all(r['codebook_in_sync'] is True for r in rows)
    assert rows[-1]['restarts'] > 0, 'the config is meant to trigger dead-code restarts'
    assert summary['world_size'] == 2
    ckpt = rdir/'checkpoints'/'step_0000006'
    assert len(load_checkpoint(ckpt)['rng']) == 2   # every rank's RNG state is saved


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    "A run killed (SIGKILL) after its first checkpoint and resumed ends bit-identical to an uninterrupted run."
    cfg = dict(TINY, steps=16, ckpt_every=4, log_every=4, dead_code_threshold=0.05)
    resume_matches_uninterrupted('beitv2_lab.task_vqkd:VQKDTask', 'beitv2_lab.task_vqkd:VQKDConfig', cfg, tmp_path, 4,
                                 ('tokenizer.safetensors',))


def test_bad_parameters_fail_before_compute(tmp_path):
    with pytest.raises(ValueError, match='teacher'): run(VQKDTask(), VQKDConfig(**TINY), teacher='nope', out_dir=str(tmp_path))
    with pytest.raises(ValueError, match='data_path'): run(VQKDTask(), VQKDConfig(**TINY), data_path=str(tmp_path/'missing'))
    with pytest.raises(ValueError, match='lr'): run(VQKDTask(), VQKDConfig(**TINY), lr=-1.0)
    assert not any(tmp_path.iterdir())


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    "A folder with corrupt, truncated and empty files next to real photos trains to the end and reports the skips."
    import shutil
    from beitv2_lab.test_utils import imagenette_path
    data = tmp_path/'imgs'; data.mkdir()
    for p in sorted((imagenette_path()/'train'/'n01440764').glob('*.JPEG'))[:6]: shutil.copy(p, data/p.name)
    (data/'corrupt.jpg').write_bytes(b'not an image at all')
    (data/'empty.png').write_bytes(b'')
    (data/'truncated.jpg').write_bytes((data/sorted(data.glob('*.JPEG'))[0].name).read_bytes()[:200])
    summary = run(VQKDTask(), VQKDConfig(**TINY), data_path=str(data), steps=6, batch_size=3, log_every=3, ckpt_every=6,
                       out_dir=str(tmp_path/'run'))
    assert summary['skipped'] >= 3, summary
    assert read_metrics(tmp_path/'run')[-1]['skipped'] == summary['skipped']
