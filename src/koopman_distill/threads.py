"""CPU threads that give way to other processes (``train.threads``).

PyTorch's CPU threads spin at every parallel region: when another CPU-bound process takes one
of the cores, each region waits for the thread that lost its core, and a small model's step
can run many times slower than on one thread. With ``threads=0`` (the default) a monitor
thread counts, ten times a second, the runnable tasks of other processes (``procs_running``
of ``/proc/stat`` less this process's running threads) and the work uses ``cores - others``
threads (at least 1, at most the count it started with) once that count has held for a
second. Unloaded, nothing changes; loaded, the work runs as fast as a single thread or faster.
``threads=N`` fixes N threads. The thread count changes the last bits of some results (the
order of floating-point sums), so runs are bitwise repeatable with a fixed ``threads=N``.
Where ``/proc`` is missing (not Linux), 0 keeps the process's thread count.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PERIOD = 0.1  # seconds between samples of the load
WINDOW = 10  # samples a new thread count must hold before it is used


def _running_others() -> int | None:
    """Runnable tasks of other processes now, or None where /proc cannot tell."""
    try:
        with open("/proc/stat") as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        ours = 0
        for stat in Path("/proc/self/task").glob("*/stat"):
            text = stat.read_text()
            ours += text[text.rindex(")") + 2] == "R"
    except (OSError, StopIteration, ValueError):
        return None
    return max(total - ours, 0)


class LoadFollower:
    """The thread count of the work: ``high`` unloaded, fewer while other processes run."""

    def __init__(self, high: int, cores: int):
        self.high, self.cores = high, cores
        self.target = high
        self._seen: deque[int] = deque(maxlen=WINDOW)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kdm-threads", daemon=True)

    def want(self, others: int) -> None:
        """Record one sample of other running tasks; the target moves once ``WINDOW`` samples
        agree on it."""
        self._seen.append(min(max(self.cores - others, 1), self.high))
        if len(self._seen) == WINDOW and len(set(self._seen)) == 1:
            self.target = self._seen[0]

    def _watch(self) -> None:
        while not self._stop.wait(PERIOD):
            others = _running_others()
            if others is None:
                return
            self.want(others)

    def start(self) -> None:
        others = _running_others()  # the first batch already runs at a fitting count
        if others is not None:
            for _ in range(WINDOW):
                self.want(others)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class CPUThreads:
    """What the work calls between steps: :meth:`apply` sets the thread count to follow."""

    def __init__(self, follower: LoadFollower | None):
        self.follower = follower

    def apply(self) -> int:
        """Use the current thread count; returns it."""
        if self.follower is not None and self.follower.target != torch.get_num_threads():
            torch.set_num_threads(self.follower.target)
        return torch.get_num_threads()


@contextmanager
def cpu_threads(threads: int, every_module_call: bool = False) -> Iterator[CPUThreads]:
    """Within the block: ``threads`` (> 0) CPU threads, or (0) the count that follows the load
    (see the module), applied when the work calls :meth:`CPUThreads.apply` and, with
    ``every_module_call``, before every ``nn.Module`` call (for work whose calls are long, such
    as a teacher's solver steps); the process's count is restored after it."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    follower = LoadFollower(before, cores or 1) if threads == 0 and before > 1 else None
    if threads > 0:
        torch.set_num_threads(threads)
    ctl, hook = CPUThreads(follower), None
    if follower is not None:
        follower.start()
        if every_module_call:
            def before_call(module: torch.nn.Module, args: object) -> None:
                ctl.apply()

            hook = torch.nn.modules.module.register_module_forward_pre_hook(before_call)
    try:
        ctl.apply()
        yield ctl
    finally:
        if hook is not None:
            hook.remove()
        if follower is not None:
            follower.stop()
        torch.set_num_threads(before)
