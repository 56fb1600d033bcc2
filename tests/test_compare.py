"""The target comparison runs every method through papermill with tiny parameters, writes its table, and resumes."""
import json

from nb_utils import n_images, run_notebook

TINY = dict(img_size=32, steps=2, batch_size=4, tokenizer_steps=2, codebook_size=64, n_embedded=32, pools='cls', num_workers=0,
            knn_every=0)   # the runs' online k-NN is not what this tests (tests/test_online_knn.py is)


def test_compare_template_every_method(tmp_path):
    from beitv2_lab.compare import METHODS
    out = tmp_path/'cmp'
    cells = run_notebook('compare_targets', tmp_path/'out.ipynb', **TINY, out_dir=str(out))
    rows = json.loads((out/'results.json').read_text())
    assert [r['method'] for r in rows] == list(METHODS)
    for r in rows:
        assert 0 <= r['linear_cls'] <= 100 and 0 <= r['knn_cls'] <= 100, r
        assert (r['method'] == 'random') == (r['pretrain_wall_s'] == 0) and r['seed'] == 0, r
    tok = {r['method']: r for r in rows if 'heldout_utilisation' in r}
    assert sorted(tok) == ['dvae', 'ibot', 'vqkd'] and all(0 < r['heldout_perplexity'] for r in tok.values())
    assert tok['vqkd']['target_stage_wall_s'] > 0 and tok['dvae']['target_stage_wall_s'] > 0
    assert (out/'results.csv').read_text().splitlines()[0].startswith('method,seed,target,')
    assert n_images(cells) >= 3
    summary = json.loads((out/'summary.json').read_text())
    assert [r['method'] for r in summary] == list(METHODS) and all(r['seeds'] == 1 for r in summary)
    assert len(json.loads((out/'pairs.json').read_text())) == 2 * 21  # 7 methods: 21 pairs, for each of the 2 probes (k-NN, linear of cls)
    # a resumed multi-seed comparison skips finished (method, seed) pairs: adding seed 1 trains only seed 1; after
    # one (method, seed) run is deleted, only that one trains again, and the other pairs' probes come out the same
    timing = lambda: {p.relative_to(out).parent.as_posix(): p.stat().st_mtime for p in out.glob('seed*/*/timing.json')}
    before = timing()
    from beitv2_lab.compare import CompareConfig, compare, run_method   # in this process: the template ran above
    two = CompareConfig(**dict(TINY, out_dir=str(out), methods='pixels,hog', seeds='0,1', n_boot=200))
    compare(two)
    after = timing()
    assert sorted(k for k in after if after[k] != before.get(k)) == ['seed1/hog', 'seed1/pixels'], after
    (out/'seed1'/'hog'/'summary.json').unlink()
    compare(two)
    again_t = timing()
    assert sorted(k for k in again_t if again_t[k] != after[k]) == ['seed1/hog'], again_t
    again = {(r['method'], r['seed']): r for r in json.loads((out/'results.json').read_text())}
    assert sorted(again) == [('hog', 0), ('hog', 1), ('pixels', 0), ('pixels', 1)]
    assert again['pixels', 0]['knn_cls'] == next(r for r in rows if r['method'] == 'pixels')['knn_cls']
    summary = {r['method']: r for r in json.loads((out/'summary.json').read_text())}
    assert summary['pixels']['seeds'] == 2 and summary['pixels']['knn_cls_seed_pm'] >= 0
    # a finished run is never reused under other parameters: the error names the field, before any compute
    import pytest
    with pytest.raises(ValueError, match=r"(?s)other parameters.*lr: finished run 0.0003 != now 0.001"):
        run_method(CompareConfig(**dict(TINY, out_dir=str(out), lr=1e-3)), 'pixels', 0)
