"""What the benchmarks measure in a running host: execution time, CPU time, and node defaults."""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scripts.comfy_host import ComfyHost, HostError, ensure_tiny_checkpoint, prepare_base_dir


def med(values: list[float]) -> float:
    return statistics.median(values)


def exec_seconds(entry: dict) -> float:
    """The host's own execution time of a finished prompt, from its status messages (ms timestamps)."""
    stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
    if stamps.get("execution_start") is None or stamps.get("execution_success") is None:
        raise HostError(f"no execution timestamps in {entry['status']['messages']!r}")
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (all its threads): steadier than wall time under load."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_defaults(host: ComfyHost, class_type: str) -> dict:
    """Each required input's default (a combo's first choice) as the running host declares it, so
    options added to the node later (e.g. sampling every N steps, off by default) need no edit here."""
    required = host.get_json(f"/object_info/{class_type}")[class_type]["input"]["required"]
    defaults = {}
    for name, spec in required.items():
        kind, extra = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            defaults[name] = extra.get("default", kind[0] if kind else None)
        elif kind == "COMBO":
            defaults[name] = extra.get("default", (extra.get("options") or [None])[0])
        elif "default" in extra:
            defaults[name] = extra["default"]
    return defaults


@contextlib.contextmanager
def bench_host(prefix: str, keep: bool) -> Iterator[ComfyHost]:
    """A host (not yet started) in a fresh base directory; stopped, and the directory removed unless `keep`."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    host = ComfyHost(prepare_base_dir(base, ensure_tiny_checkpoint()))
    try:
        yield host
    finally:
        host.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("base directory kept:", base)
