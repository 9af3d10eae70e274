"""The LoRA Dataset node's data options through the real Train LoRA node: masks, class images, caption dropout."""
from __future__ import annotations

import dataclasses
import json

from PIL import Image

from scripts.graphs import Graph, checkpoint, out
from scripts.make_demo_dataset import make_demo_dataset
from scripts.training_graphs import TRIGGER, option_nodes
from trainer.safetensors_io import read_safetensors
from trainer.training.data_options import DataOptions
from trainer.training.settings import field_help

# The controls users of sd-scripts combine, on the option nodes: Prodigy (its own lr estimate: learning_rate is a
# multiplier) with cosine restarts, an EMA saved beside the weights, gradient checkpointing on the host's blocks.
CONTROLS = {"optimizer": "prodigy", "schedule": "cosine_with_restarts", "lr_cycles": 2, "ema": True,
            "ema_decay": 0.5, "ema_every": 1, "checkpoint_every": 2, "weight_decay": 0.0,
            "gradient_checkpointing": True}


def _graph(steps: int, resume: bool) -> tuple[Graph, str, str]:
    g = Graph()
    ckpt = checkpoint(g)
    data = g.add("LoraLabDataset", folder="masked_rings", trigger_word=TRIGGER, resolution=64, flip=False,
                 validation_share=0.0, seed=0, shuffle_caption=True, caption_dropout_rate=0.5, masked_loss=True,
                 reg_folder="ring_classes", prior_loss_weight=0.5)
    train = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                  name="data_options", steps=steps, learning_rate=1.0, rank=4, alpha=4.0, batch_size=2, seed=5,
                  options=option_nodes(g, {**CONTROLS, "resume": resume}))
    return g, data, train


def test_masks_class_images_caption_dropout_with_prodigy_restarts_and_ema_train_resume_and_are_recorded(host):
    data_folder = make_demo_dataset(host.input_dir / "masked_rings", count=3, size=64)
    (data_folder / "masks").mkdir()
    for name in ("ring_00", "ring_01"):  # the third image has no mask: it trains everywhere
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        mask.save(data_folder / "masks" / f"{name}.png")
    reg_folder = make_demo_dataset(host.input_dir / "ring_classes" / "1_ring", count=2, size=64, seed=3)
    for caption in reg_folder.glob("*.txt"):
        caption.unlink()  # class images take their folder's class name, 'ring'

    g, data, train = _graph(steps=3, resume=False)
    first = host.run(g.nodes, timeout=900)
    summary = first["outputs"][data]["text"][0]
    assert "2 class images → 3 samples/epoch (prior loss weight 0.5)" in summary and "2 masked" in summary
    first_losses = first["outputs"][train]["loss_history"]
    assert len(first_losses) == 3

    g, _, train = _graph(steps=6, resume=True)  # continues the run saved under the same name
    resumed = host.run(g.nodes, timeout=900)["outputs"][train]
    history = resumed["loss_history"]
    assert len(history) == 6 and history[:3] == first_losses  # the same run, continued
    start, _ = first["outputs"][train]["eval_loss"]
    _, end = resumed["eval_loss"]
    assert end < start, (start, end)  # the loss at fixed noise fell over the run

    tensors, metadata = read_safetensors(host.loras_dir / "data_options.safetensors")
    ema, ema_metadata = read_safetensors(host.loras_dir / "data_options-ema.safetensors")
    assert sorted(ema) == sorted(tensors) and ema_metadata["loralab.weights"] == "ema"
    assert metadata["ss_steps"] == "6" and metadata["ss_lr_scheduler"] == "cosine_with_restarts"
    assert metadata["ss_optimizer"] == "prodigyopt.prodigy.Prodigy(weight_decay=0.0)"
    assert metadata["loralab.data.masked_loss"] == "true"
    assert json.loads(metadata["loralab.data.reg_folder"]) == "ring_classes"
    assert metadata["loralab.data.caption_dropout_rate"] == "0.5"
    assert metadata["loralab.data.shuffle_caption"] == "true" and metadata["loralab.data.prior_loss_weight"] == "0.5"
    assert metadata["ss_num_reg_images"] == "2" and metadata["ss_masked_loss"] == "True"
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"ring_classes/1_ring": {"n_repeats": 2, "img_count": 2}}
    assert metadata["ss_caption_dropout_rate"] == "0.5" and metadata["ss_prior_loss_weight"] == "0.5"


def test_the_dataset_node_offers_every_data_option_last_with_the_engine_help(host):
    optional = host.get_json("/object_info/LoraLabDataset")["LoraLabDataset"]["input"]["optional"]
    data_options = [f.name for f in dataclasses.fields(DataOptions)]
    assert list(optional) == [*data_options, "video_frames", "frame_stride"]  # the video sampling after them
    assert optional["caption_dropout_rate"] == ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                                          "tooltip": field_help(DataOptions, "caption_dropout_rate")}]
    assert all(optional[name][1]["tooltip"] == field_help(DataOptions, name) for name in data_options)
