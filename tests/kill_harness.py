"""Run ``kdm`` commands in forked children and SIGKILL them at chosen points.

Started once per test module (``python tests/kill_harness.py``), it imports the package and
then serves one JSON request per stdin line, answering one JSON line on stdout. Each request
runs ``kdm ARGV`` in a forked child, so no run pays the import again. The child is killed with
SIGKILL (no cleanup of any kind) either

- at a commit point: just ``before`` or just ``after`` its k-th ``os.replace`` call (every
  atomic file write, checkpoint rename and pointer update goes through ``os.replace``), or
- at a time: ``delay`` seconds after the file ``after_file`` appears.

Request: ``{"argv": [...], "log": PATH, "kill_at": k, "when": "before"|"after",
"after_file": PATH, "delay": s}`` (the kill keys optional). Answer: ``{"status": exit code
or -9, "cpu": CPU seconds, "replaces": [destination of each os.replace the child made]}``.

The parent never runs a torch operation, so forking it is safe; run it with
``OMP_NUM_THREADS=1`` so that every child computes with the same thread count.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

import torch._dynamo  # noqa: F401  (imported lazily by the first optimizer; pay it once here)

import koopman_distill.api  # noqa: F401
from koopman_distill.cli import build_parser, main

build_parser()  # and the parser's own imports


def _child(req: dict, trace: str) -> None:
    fd = os.open(req.get("log", os.devnull), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    real, count = os.replace, [0]
    kill_at, when = req.get("kill_at"), req.get("when", "before")

    def replace(src, dst, *args, **kwargs):
        count[0] += 1
        if count[0] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)
        with open(trace, "a") as f:
            f.write(f"{dst}\n")
        if count[0] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    try:
        code = main(req["argv"])
    except BaseException:  # a bug: keep the traceback in the log, report failure
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _wait(pid: int, req: dict) -> tuple[int, float]:
    """Exit code (-9: killed) and CPU seconds of child ``pid``, killing it if asked."""
    if "delay" in req:
        while not os.path.exists(req["after_file"]):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            time.sleep(0.002)
        time.sleep(req["delay"])
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        fd, trace = tempfile.mkstemp(suffix=".trace")
        os.close(fd)
        pid = os.fork()
        if pid == 0:
            _child(req, trace)
        status, cpu = _wait(pid, req)
        with open(trace) as f:
            replaces = f.read().splitlines()
        os.remove(trace)
        print(json.dumps({"status": status, "cpu": cpu, "replaces": replaces}), flush=True)


if __name__ == "__main__":
    serve()
