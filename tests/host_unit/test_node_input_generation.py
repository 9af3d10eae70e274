"""Node inputs from the config fields and configs back from input values; saved workflows still understood."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType

import pytest

from scripts.host_import import REPO, import_pack_module

# Settings no node input sets: a run always saves its resume state with its checkpoints.
NOT_ON_A_NODE = {("Checkpointing", "save_resume_state")}
# Workflows saved before train_text_encoder, text_encoder_lr and keep_last existed.
WORKFLOWS = ("workflows/train_lora_from_folder.json", "workflows/resume_stopped_run.json")


@pytest.fixture(scope="module")
def pack() -> dict[str, ModuleType]:
    return {name: import_pack_module(module) for name, module in (
        ("inputs", "nodes.config_inputs"), ("options", "nodes.train_options"), ("config", "trainer.training.config"),
        ("groups", "nodes.option_groups"), ("settings", "trainer.training.settings"))}


def test_no_inputs_means_the_dataclass_defaults(pack: dict[str, ModuleType]) -> None:
    config, inputs = pack["config"], pack["inputs"]
    assert inputs.build_config({}) == config.TrainConfig()
    assert inputs.section_from_inputs(config.Sampling, {}) == config.Sampling()
    assert inputs.section_from_inputs(config.RunStart, {}) == config.RunStart()


def test_each_input_sets_its_field(pack: dict[str, ModuleType]) -> None:
    config, inputs = pack["config"], pack["inputs"]
    built = inputs.build_config({"steps": 40, "learning_rate": 3e-4, "rank": 8, "alpha": 4.0, "batch_size": 2,
                                 "seed": 7, "checkpoint_every": 10, "keep_last": 2, "min_snr_gamma": 5.0,
                                 "text_encoder_lr": 1e-5, "mixed_precision": "no"})
    assert built == config.TrainConfig(
        lora=config.LoraShape(rank=8, alpha=4.0, text_encoder_lr=1e-5),
        optimisation=config.Optimisation(steps=40, learning_rate=3e-4, batch_size=2, seed=7, min_snr_gamma=5.0,
                                         mixed_precision="no"),
        checkpointing=config.Checkpointing(every_n_steps=10, keep_last=2))
    sampling = inputs.section_from_inputs(config.Sampling, {"sample_every": 5, "sample_prompts": "a\nb",
                                                            "sample_steps": 3, "sample_cfg": 2.5,
                                                            "sample_sampler": "dpmpp_2m",
                                                            "sample_scheduler": "karras", "steps": 40})
    assert sampling == config.Sampling(every_n_steps=5, prompts="a\nb", steps=3, cfg=2.5, sampler="dpmpp_2m",
                                       scheduler="karras")


def test_every_setting_has_exactly_one_input(pack: dict[str, ModuleType]) -> None:
    config, inputs = pack["config"], pack["inputs"]
    sections = (config.LoraShape, config.Optimisation, config.Checkpointing, config.Ema, config.Sampling,
                config.RunStart, config.Evaluation, config.Workers)
    declared = {(cls.__name__, f.name) for cls in sections for f in dataclasses.fields(cls)}
    reached = [(cls.__name__, name) for cls, name in inputs.INPUT_FIELDS.values()]
    assert len(reached) == len(set(reached))
    assert declared - set(reached) == NOT_ON_A_NODE and set(reached) <= declared
    train_lora_inputs = ("steps", "learning_rate", "rank", "alpha", "batch_size", "seed")
    older_node = list(pack["options"].REQUIRED) + list(pack["options"].OPTIONAL)
    grouped = [name for group in _groups(pack) for name in group.SETTINGS]
    # The grouped nodes hold every option once: a graph needs no Train LoRA Options node, which keeps its inputs.
    assert len(grouped) == len(set(grouped))
    assert sorted(grouped) == sorted(set(inputs.INPUT_FIELDS) - set(train_lora_inputs))
    assert set(older_node) <= set(grouped) and len(older_node) == len(set(older_node))


def _groups(pack: dict[str, ModuleType]) -> list[type]:
    groups = pack["groups"]
    return [groups.LoraLabAdapterOptions, groups.LoraLabOptimizerOptions, groups.LoraLabObjectiveOptions,
            groups.LoraLabRunOptions]


def test_grouped_option_nodes_chain_and_the_nearer_node_wins(pack: dict[str, ModuleType]) -> None:
    groups, inputs, settings = pack["groups"], pack["inputs"], pack["settings"]
    (older,) = pack["options"].LoraLabTrainOptions().options(optimizer="lion", loss_type="l1")
    (objective,) = groups.LoraLabObjectiveOptions().options(options=older, loss_type="huber", huber_c=0.2)
    (optimizer,) = groups.LoraLabOptimizerOptions().options(options=objective, optimizer="prodigy")
    built = inputs.build_config({**optimizer, "learning_rate": 1.0})
    assert built.optimisation.optimizer == "prodigy" and built.optimisation.loss_type == "huber"
    assert built.optimisation.huber_c == 0.2 and older == {"optimizer": "lion", "loss_type": "l1"}  # not changed
    for group in _groups(pack):
        types = group.INPUT_TYPES()
        assert list(types["required"]) == list(group.SETTINGS) and list(types["optional"]) == ["options"]
        for name in group.SETTINGS:  # the same entry as wherever else the setting is an input
            section, field_name = inputs.INPUT_FIELDS[name]
            assert types["required"][name][1]["tooltip"] == settings.field_help(section, field_name)


def test_input_entries_come_from_the_fields(pack: dict[str, ModuleType]) -> None:
    config, inputs, settings = pack["config"], pack["inputs"], pack["settings"]
    assert inputs.input_spec("mixed_precision") == (
        ["no", "fp16", "bf16"],
        {"default": "bf16", "tooltip": settings.field_help(config.Optimisation, "mixed_precision")})
    assert inputs.input_spec("checkpoint_every") == (
        "INT", {"default": 0, "min": 0, "max": 1_000_000,
                "tooltip": settings.field_help(config.Checkpointing, "every_n_steps")})
    assert inputs.input_spec("sample_prompts")[1]["multiline"] is True
    assert inputs.input_spec("sample_sampler", ["euler", "ddim"])[0] == ["euler", "ddim"]
    assert inputs.input_spec("resume")[0] == "BOOLEAN"


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_saved_workflow_widgets_keep_their_positions(pack: dict[str, ModuleType], workflow: str) -> None:
    """A saved workflow stores widget values by position: the old inputs keep their order, new ones come after,
    and its values build the config they meant (0 = off for min_snr_gamma, as the node always said)."""
    nodes = json.loads((Path(REPO) / workflow).read_text())["nodes"]
    node = next(n for n in nodes if n["type"] == "LoraLabTrainOptions")
    names = [i["name"] for i in node["inputs"] if i.get("widget")]
    assert list(pack["options"].REQUIRED) == names[:len(pack["options"].REQUIRED)]
    values = dict(zip(pack["options"].REQUIRED, node["widgets_values"], strict=True))
    config = pack["inputs"].build_config({**values, "steps": 500})
    assert config.optimisation.min_snr_gamma == 0 and config.optimisation.mixed_precision == "bf16"
    assert config.checkpointing.every_n_steps == values["checkpoint_every"] and config.checkpointing.keep_last == 0
    assert config.lora.train_text_encoder is False and config.lora.text_encoder_lr == 0
    types = pack["options"].LoraLabTrainOptions.INPUT_TYPES()
    assert list(types["required"]) == list(pack["options"].REQUIRED)
    assert list(types["optional"]) == ["train_text_encoder", "text_encoder_lr", "keep_last", "optimizer_class",
                                       "optimizer_args", "optimizer_fallback", "lr_cycles", "lr_power",
                                       "decay_steps", "min_lr_ratio", "timestep_sampling", "min_timestep",
                                       "max_timestep", "sigmoid_scale", "logit_mean", "logit_std",
                                       "discrete_flow_shift", "ema", "ema_decay", "ema_every", "ema_for_samples",
                                       "ema_for_final", "eval_images", "workers"]
