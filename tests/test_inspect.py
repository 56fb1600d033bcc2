"""`nbs/inspect_model.ipynb` through papermill on tiny models: a MIM model's attention beside an iBOT student's and
its predictions against a dVAE tokenizer (drawn by the decoder); an iBOT teacher beside its random-init twin; a MIM
model without its tokenizer refused before anything is computed."""
import pytest
import torch

from nb_utils import n_images, run_notebook


def stdout(cells: list[dict]) -> str:
    "What the cells printed."
    return ''.join(''.join(o.get('text', '')) for c in cells for o in c.get('outputs', []) if o.get('output_type') == 'stream')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A tiny MIM model (64 px, 4x4 patches, K=64), the dVAE it predicts (32 px, 4x4 codes), a tiny iBOT run's model file."
    from beitv2_lab.dvae import create_dvae
    from beitv2_lab.mim import create_mim
    from beitv2_lab.task_mim import save_mim
    from beitv2_lab.test_utils import tiny_run
    root = tmp_path_factory.mktemp('inspect')
    torch.manual_seed(0)
    (root/'mimrun').mkdir()
    save_mim(create_mim('beitv2_tiny_patch16_224', img_size=64, head_dim=64), root/'mimrun'/'mim.safetensors')
    create_dvae('dvae_tiny', img_size=32, codebook_size=64).save(root/'dvae.safetensors')
    ibot = tiny_run('ibot', root/'ibotrun').parent/'ibot.safetensors'
    return dict(mim=str(root/'mimrun'/'mim.safetensors'), dvae=str(root/'dvae.safetensors'), ibot=str(ibot))


def test_inspect_template(files, tmp_path):
    from beitv2_lab.test_utils import imagenette_path
    cells = run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['mim'], second_backbone=f"ibot_student:{files['ibot']}",
                         mim_model=files['mim'], tokenizer=files['dvae'], data_path=str(imagenette_path()/'train'), n_images=2, img_size=64)
    text = stdout(cells)
    assert 'backbones: mimrun, ibotrun student; MIM model' in text and 'dvae tokenizer' in text, text
    for name in ('mimrun', 'ibotrun student'): assert f"{name}, last block, mean of heads, on 'tench'" in text, text
    assert 'masked-token accuracy: tench ' in text and ', parachute ' in text, text
    assert n_images(cells) == 2                                                   # the attention and the prediction pictures


def test_inspect_template_random_twin(files, tmp_path):
    "With no second backbone, the first one's architecture at random init stands beside it; no MIM model, no predictions."
    cells = run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['ibot'], n_images=1, img_size=32)
    text = stdout(cells)
    assert 'backbones: ibotrun teacher, random init' in text and "random init, last block, mean of heads, on 'astronaut'" in text, text
    assert 'no mim_model given' in text and n_images(cells) == 1, text


def test_inspect_template_refuses_half_a_mim_pair(files, tmp_path):
    "A MIM model without its tokenizer is refused by name before any backbone is loaded."
    from papermill import PapermillExecutionError
    with pytest.raises(PapermillExecutionError, match='mim_model and tokenizer go together'):
        run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['mim'], mim_model=files['mim'], img_size=64, n_images=1)
