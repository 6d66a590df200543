"""Supervised fine-tuning on prompt/response pairs made from the embedded corpus (no download).

Each documented stdlib function: its signature and docstring are the prompt, its body the
response (`mdm.data.pairs`). Start from a pretrained run of the same model:

    python train.py --config configs/sft.py --config.init.workdir=runs/default --workdir runs/sft
    python train.py --config configs/sft.py --config.objective=ar --config.init.workdir=runs/ar --workdir runs/sft_ar

The loss covers the response and its EOS (per response token); the prompt is never masked. With
supervise_padding the padding after EOS is trained too, so samples end where the model stops.
"""

import pathlib

from mdm.cli import load_config


def get_config():
    c = load_config(pathlib.Path(__file__).with_name("default.py"))
    c.data.format = "pairs"
    c.data.mode = "pad"
    c.data.seq_len = 256
    c.data.val_percent = 10
    c.data.supervise_padding = True
    c.train.num_steps = 300
    c.train.batch_size = 16
    c.train.eval_every = 100
    c.train.eval_batch_size = 16
    c.train.eval_batches = 4
    c.train.checkpoint_every = 300
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 20
    c.sample.num_samples = 0
    return c
