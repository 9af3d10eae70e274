"""What the benchmarks measure in a running host (execution time, CPU time, node defaults), and the lines every
benchmark prints around its table (command, machine load, host versions)."""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
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
def bench_host(prefix: str, keep: bool, full_size: bool = False) -> Iterator[ComfyHost]:
    """A host (not yet started) in a fresh base directory with the small (or `full_size`) SD1.5 checkpoint;
    stopped, and the directory removed unless `keep`."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    host = ComfyHost(prepare_base_dir(base, ensure_tiny_checkpoint(full_size=full_size)))
    try:
        yield host
    finally:
        host.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("base directory kept:", base)


def command_line() -> str:
    """How this benchmark was started, as a shell line."""
    return shlex.join([Path(sys.executable).as_posix(), *sys.argv])


def print_start() -> float:
    """Prints the command line and the machine's load; returns the start time (time.monotonic)."""
    print("command:", command_line())
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    return time.monotonic()


def limit_host_threads(threads: int) -> None:
    """CPU threads of hosts started after this (OMP_NUM_THREADS, inherited); 0 leaves torch's default."""
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def rss_follows_live_memory() -> None:
    """Hosts started after this take large blocks straight from mmap and give freed memory back to the OS
    (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, inherited), so their RSS follows their live memory instead of
    keeping an earlier prompt's high-water mark."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")


def host_versions(host: ComfyHost) -> str:
    """'ComfyUI x, python y, torch z' as the running host reports them."""
    system = host.get_json("/system_stats").get("system", {})
    return (f"ComfyUI {system.get('comfyui_version', '?')}, python {system.get('python_version', '?').split()[0]}, "
            f"torch {system.get('pytorch_version', '?')}")


def print_end(started: float, busy_above: str) -> None:
    """The run's total time and the load at its end (above `busy_above`, other processes competed)."""
    print(f"total {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at end "
          f"(above {busy_above} means other processes competed for the CPUs)")
