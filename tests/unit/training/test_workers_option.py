"""Train LoRA Options' `workers` text: what it asks for, what it refuses (by name, with what is allowed), and which
GPUs the workers get beside the host's own; the graph the workers are given (the node and what it needs)."""
from __future__ import annotations

import pytest

from cli.workflow import nodes_needed
from trainer.errors import ConfigError
from trainer.training.config import Workers
from trainer.training.workers import WorkerRequest, cuda_worker_devices, parse_workers


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), ("  ", None), ("2", WorkerRequest(2)), (" 1 ", WorkerRequest(1)),
    ("cuda:1,cuda:2", WorkerRequest(2, (1, 2))), ("CUDA:3, cuda:1", WorkerRequest(2, (3, 1))),
])
def test_workers_text_asks_for_processes_or_gpus(text: str, expected: WorkerRequest | None) -> None:
    assert parse_workers(text) == expected
    assert Workers(workers=text).request == expected  # the node's setting reads it the same way


@pytest.mark.parametrize(("text", "fragment"), [
    ("0", "workers = '0' is not allowed; expected between 1 and 64 processes"),
    ("65", "between 1 and 64"),
    ("two", "workers = 'two' is not allowed; expected '' (train in this process), a number of worker processes"),
    ("1,2", "such as cuda:1,cuda:2"),
    ("cuda:1,cuda:1", "names a GPU twice"),
    ("cuda:1,", "is not allowed"),
])
def test_a_malformed_workers_text_is_refused_by_name(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="workers") as raised:
        Workers(workers=text)
    assert fragment in str(raised.value)


def test_the_workers_get_the_gpus_after_the_hosts_own_or_those_named() -> None:
    visible = ("0", "1", "2", "3")  # CUDA_VISIBLE_DEVICES entries, in the host's cuda:N order
    assert cuda_worker_devices(WorkerRequest(2), 0, visible) == ("1", "2")
    assert cuda_worker_devices(WorkerRequest(2), 1, visible) == ("2", "3")
    assert cuda_worker_devices(WorkerRequest(2, (3, 1)), 0, ("4", "5", "6", "7")) == ("7", "5")
    with pytest.raises(ConfigError, match="sees 4 GPUs, so 2 follow its own; ask for at most 2"):
        cuda_worker_devices(WorkerRequest(3), 1, visible)
    with pytest.raises(ConfigError, match="cuda:0, the host's own GPU"):
        cuda_worker_devices(WorkerRequest(2, (0, 1)), 0, visible)
    with pytest.raises(ConfigError, match="names cuda:4, but the host sees 4 GPUs"):
        cuda_worker_devices(WorkerRequest(1, (4,)), 0, visible)


def test_the_workers_graph_is_the_node_and_what_it_needs() -> None:
    prompt = {"1": {"class_type": "Loader", "inputs": {"name": "a"}},
              "2": {"class_type": "Options", "inputs": {"workers": "2", "steps": ["5", 0]}},
              "3": {"class_type": "Train",
                    "inputs": {"model": ["1", 0], "options": ["2", 0], "tags": {"__value__": [1, 2]}}},
              "4": {"class_type": "Save", "inputs": {"model": ["3", 0]}},
              "5": {"class_type": "Int", "inputs": {"value": 5}},
              "6": {"class_type": "Other", "inputs": {}}}
    needed = nodes_needed(prompt, "3")
    assert list(needed) == ["1", "2", "3", "5"]
    needed["2"]["inputs"]["workers"] = ""
    assert prompt["2"]["inputs"]["workers"] == "2", "a copy: the queued graph is left as it is"
