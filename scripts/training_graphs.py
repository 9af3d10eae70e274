"""Training graphs and polling helpers shared by the end-to-end tests of Train LoRA and its samples."""
from __future__ import annotations

import functools
import time

from scripts.graphs import Graph, checkpoint, out
from scripts.host_import import import_pack_module

TRIGGER = "lrlring"
# What these tests set differently from the defaults: fp32 and few sampler steps, so runs are quick and
# the same on every machine; no weight decay and more layers, so a dozen steps visibly learn.
TEST_OPTIONS = {"targets": "attention_ff", "weight_decay": 0.0, "mixed_precision": "no", "sample_steps": 2,
                "sample_cfg": 5.0}


@functools.cache
def option_defaults() -> dict[str, object]:
    """Every Train LoRA Options input at its default, taken from the engine's config fields as the node does."""
    config_inputs = import_pack_module("nodes.config_inputs")
    train_options = import_pack_module("nodes.train_options")
    return {name: config_inputs.input_spec(name)[1]["default"]
            for name in train_options.REQUIRED + train_options.OPTIONAL}


@functools.cache
def setting_defaults() -> dict[str, object]:
    """Every setting's default by input name, as the option nodes announce it."""
    config_inputs = import_pack_module("nodes.config_inputs")
    return {name: config_inputs.input_spec(name)[1]["default"] for name in config_inputs.INPUT_FIELDS}


def option_nodes(g: Graph, options: dict) -> list:
    """A Train LoRA Options node with `options` over the tests' settings, chained into the grouped option node of
    each setting the older node does not have; returns the output for Train LoRA's `options` input."""
    unknown = set(options) - set(setting_defaults())
    if unknown:  # the host would drop an input no node declares, and the test would train without it
        raise KeyError(f"no option node has the inputs {sorted(unknown)}")
    values = {**setting_defaults(), **TEST_OPTIONS, **options}
    node = g.add("LoraLabTrainOptions", **{name: values[name] for name in option_defaults()})
    groups = import_pack_module("nodes.option_groups")
    for group in (groups.LoraLabAdapterOptions, groups.LoraLabOptimizerOptions, groups.LoraLabObjectiveOptions,
                  groups.LoraLabRunOptions):
        if any(name in group.SETTINGS and name not in option_defaults() for name in options):
            node = g.add(group.__name__, options=out(node), **{name: values[name] for name in group.SETTINGS})
    return out(node)


def train_graph(name: str, steps: int = 12, lr: float = 2e-3, rank: int = 4, folder: str = "rings",
                options: dict | None = None, validation_share: float = 0.0, resolution: int = 64,
                batch_size: int = 1) -> tuple[Graph, str]:
    g = Graph()
    ckpt = checkpoint(g)
    data = g.add("LoraLabDataset", folder=folder, trigger_word=TRIGGER, resolution=resolution, flip=False,
                 validation_share=validation_share, seed=0)
    kwargs = {}
    if options is not None:
        kwargs["options"] = option_nodes(g, options)
    train = g.add("LoraLabTrainLora", model=out(ckpt, 0), clip=out(ckpt, 1), vae=out(ckpt, 2), dataset=out(data),
                  name=name, steps=steps, learning_rate=lr, rank=rank, alpha=float(rank), batch_size=batch_size, seed=5,
                  **kwargs)
    return g, train


def wait_for_step(host, name: str, step: int, timeout: float = 120.0) -> dict:
    """The newest job called `name` once it has reached `step`, polled through the status route."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = next((j for j in host.get_json("/loralab/jobs") if j["name"] == name), None)
        if job and job["step"] >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {name} did not reach step {step} in {timeout:.0f}s")
