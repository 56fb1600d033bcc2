"""The evaluation template runs through papermill with tiny parameters and reports every backbone."""
import torch

from nb_utils import markdown_text, n_images, run_notebook


def test_eval_template_mim(tmp_path):
    "A MIM model against its random-init twin, the tokenizer's code histograms, and the fine-tune table."
    from beitv2_lab.mim import create_mim
    from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
    from beitv2_lab.task_mim import save_mim
    torch.manual_seed(0)
    save_tokenizer(create_tokenizer('vqkd_tiny', img_size=32, codebook_size=64), tmp_path/'tok.safetensors')
    (tmp_path/'mimrun').mkdir()
    save_mim(create_mim('beitv2_tiny_patch16_224', img_size=32, head_dim=64), tmp_path/'mimrun'/'mim.safetensors')
    cells = run_notebook('eval', tmp_path/'out.ipynb', backbone=str(tmp_path/'mimrun'/'mim.safetensors'),
                         tokenizer=str(tmp_path/'tok.safetensors'), img_size=32, n_embedded=40, num_workers=0, pools='cls',
                         finetune_epochs=1, finetune_batch_size=16)
    texts = markdown_text(cells)
    for name in ('| mimrun | cls |', '| random init | cls |', '| tokenizer codes | histogram |'):
        assert name in texts, texts
    assert '| mimrun |' in texts.split('fine-tuned 1 epoch(s)')[-1], texts   # the fine-tune table
    assert n_images(cells) >= 1


def test_eval_template_ibot(tmp_path):
    "Every backbone file of a real tiny iBOT run: the teacher, the student, the timm export; its online tokenizer."
    from beitv2_lab.test_utils import tiny_run
    tok = tiny_run('ibot', tmp_path/'ibotrun')
    run = tmp_path/'ibotrun'
    cells = run_notebook('eval', tmp_path/'out.ipynb', backbone=str(run/'ibot.safetensors'),
                         extra_backbones=f"ibot_student:{run/'ibot.safetensors'}, {run/'backbone.safetensors'}",
                         tokenizer=str(tok), img_size=32, n_embedded=40, num_workers=0, pools='cls,mean',
                         finetune_epochs=1, finetune_batch_size=16)
    texts = markdown_text(cells)
    probes, finetuned = texts.split('fine-tuned 1 epoch(s)')
    for name in ('ibotrun teacher', 'ibotrun student', 'ibotrun', 'random init'):
        for pool in ('cls', 'mean'): assert f'| {name} | {pool} |' in probes, probes
        assert f'| {name} |' in finetuned, finetuned                          # the timm export fine-tunes too
    assert '| tokenizer codes | histogram |' in probes, probes
    assert n_images(cells) >= 1
