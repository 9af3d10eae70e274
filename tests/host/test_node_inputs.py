"""Train LoRA's and its options' inputs in the real host's /object_info are the engine's config fields."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from scripts.host_import import import_comfy, import_pack_module
from scripts.training_graphs import train_graph
from trainer.training import config

KINDS = {int: "INT", float: "FLOAT", bool: "BOOLEAN", str: "STRING"}
GROUPED_NODES = ("LoraLabAdapterOptions", "LoraLabOptimizerOptions", "LoraLabObjectiveOptions", "LoraLabRunOptions")
HOST_CHOICES = {"sample_sampler": "SAMPLERS", "sample_scheduler": "SCHEDULERS"}  # comfy.samplers.KSampler.<name>
# Not in prompts saved before them.
NEWER_OPTIONAL = ("train_text_encoder", "text_encoder_lr", "keep_last", "optimizer_class", "optimizer_args",
                  "optimizer_fallback", "lr_cycles", "lr_power", "decay_steps", "min_lr_ratio", "timestep_sampling",
                  "min_timestep", "max_timestep", "sigmoid_scale", "logit_mean", "logit_std", "discrete_flow_shift",
                  "ema", "ema_decay", "ema_every", "ema_for_samples", "ema_for_final", "eval_images", "workers")


def _field(name: str) -> tuple[type, dataclasses.Field]:
    """The engine's field behind input `name` (the classes of this process, not of the pack's import)."""
    section, field_name = import_pack_module("nodes.config_inputs").INPUT_FIELDS[name]
    cls = getattr(config, section.__name__)
    return cls, next(f for f in dataclasses.fields(cls) if f.name == field_name)


def _expected(name: str) -> tuple[object, dict]:
    cls, f = _field(name)
    options = {"default": f.default, **f.metadata.get("ui", {}), "tooltip": f.metadata["help"]}
    if name in HOST_CHOICES:
        import_comfy()
        import comfy.samplers
        return list(getattr(comfy.samplers.KSampler, HOST_CHOICES[name])), options
    if "choices" in f.metadata:
        return list(f.metadata["choices"]), options
    return KINDS[typing.get_type_hints(cls)[f.name]], options


@pytest.mark.parametrize(("node", "required", "optional"), [
    ("LoraLabTrainLora", ("steps", "learning_rate", "rank", "alpha", "batch_size", "seed"), ()),
    ("LoraLabTrainOptions", None, NEWER_OPTIONAL),
    *((group, "grouped", ()) for group in GROUPED_NODES),
])
def test_announced_inputs_are_the_config_fields(host, node: str, required: tuple | str | None, optional: tuple) -> None:
    info = host.get_json(f"/object_info/{node}")[node]
    announced = {**info["input"]["required"], **info["input"].get("optional", {})}
    if required is None:  # every required input of the options node is a setting
        required = tuple(info["input"]["required"])
    elif required == "grouped":
        required = getattr(import_pack_module("nodes.option_groups"), node).SETTINGS
    assert set(optional) <= set(info["input"].get("optional", {}))
    settings = [*required, *optional]
    wrong = {}
    for name in settings:
        kind, options = _expected(name)
        got_kind, got_options = announced[name][0], announced[name][1]
        if got_kind != kind or got_options != options:
            wrong[name] = {"announced": announced[name], "config": [kind, options]}
    assert wrong == {}
    if node == "LoraLabTrainOptions":  # nothing on the node that is not a setting
        assert sorted(announced) == sorted(settings)
    elif node != "LoraLabTrainLora":  # a grouped node: its settings, in order, and the chain input
        assert list(info["input"]["required"]) == list(required) and list(info["input"]["optional"]) == ["options"]


def test_api_prompt_without_the_newer_optional_inputs_runs(host, rings) -> None:
    g, train = train_graph("before_keep_last", steps=2, options={})
    options_node = next(n for n in g.nodes.values() if n["class_type"] == "LoraLabTrainOptions")
    for name in NEWER_OPTIONAL:
        del options_node["inputs"][name]
    entry = host.run(g.nodes, timeout=600)
    assert entry["outputs"][train]["lora_name"] == ["before_keep_last.safetensors"]
    assert len(entry["outputs"][train]["loss_history"]) == 2
