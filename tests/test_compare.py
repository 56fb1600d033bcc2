"""The target comparison runs every method through papermill with tiny parameters, writes its table, and resumes."""
import json

from nb_utils import n_images, run_notebook

TINY = dict(img_size=32, steps=2, batch_size=4, tokenizer_steps=2, codebook_size=64, n_embedded=32, pools='cls', num_workers=0)


def test_compare_template_every_method(tmp_path):
    from beitv2_lab.compare import METHODS
    out = tmp_path/'cmp'
    cells = run_notebook('compare_targets', tmp_path/'out.ipynb', **TINY, out_dir=str(out))
    rows = json.loads((out/'results.json').read_text())
    assert [r['method'] for r in rows] == list(METHODS)
    for r in rows:
        assert 0 <= r['linear_cls'] <= 100 and 0 <= r['knn_cls'] <= 100, r
        assert (r['method'] == 'random') == (r['pretrain_wall_s'] == 0), r
    tok = {r['method']: r for r in rows if 'heldout_utilisation' in r}
    assert sorted(tok) == ['dvae', 'ibot', 'vqkd'] and all(0 < r['heldout_perplexity'] for r in tok.values())
    assert tok['vqkd']['target_stage_wall_s'] > 0 and tok['dvae']['target_stage_wall_s'] > 0
    assert (out/'results.csv').read_text().splitlines()[0].startswith('method,target,')
    assert n_images(cells) >= 3
    # an interrupted comparison resumes: delete one method's result, rerun (two methods, to keep the test short):
    # only that method trains again, the other is skipped and its probes come out the same
    mtimes = {p: p.stat().st_mtime for p in out.glob('*/timing.json')}
    (out/'hog'/'summary.json').unlink()
    run_notebook('compare_targets', tmp_path/'again.ipynb', **TINY, out_dir=str(out), methods='pixels,hog')
    changed = sorted(p.parent.name for p in out.glob('*/timing.json') if p.stat().st_mtime != mtimes[p])
    assert changed == ['hog'], changed
    again = {r['method']: r for r in json.loads((out/'results.json').read_text())}
    assert again['pixels']['knn_cls'] == next(r for r in rows if r['method'] == 'pixels')['knn_cls']
    # a finished run is never reused under other parameters: the error names the field, before any compute
    import pytest
    from beitv2_lab.compare import CompareConfig, run_method
    with pytest.raises(ValueError, match=r"(?s)other parameters.*lr: finished run 0.0003 != now 0.001"):
        run_method(CompareConfig(**dict(TINY, out_dir=str(out), lr=1e-3)), 'pixels')
