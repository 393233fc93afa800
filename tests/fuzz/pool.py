"""Runs case ranges in worker subprocesses; a worker that dies (abort, segfault) or hangs is
reported with the case that killed it and replaced, and the range goes on after that case.
"""

import collections
import dataclasses
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import cases

ROOT = Path(__file__).resolve().parents[2]
# Set (e.g. from a SIGTERM handler) to stop a run early: workers are killed, the report kept.
STOP = threading.Event()


@dataclasses.dataclass
class Report:
    seed: int
    cases: int = 0
    passed_ok: int = 0
    passed_error: int = 0
    denormal_modes: int = 0
    failures: list = dataclasses.field(default_factory=list)  # wrong answers / wrong errors
    crashes: list = dataclasses.field(default_factory=list)  # aborts, segfaults, hangs
    by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_mode: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    restarts: int = 0
    seconds: float = 0.0

    @property
    def clean(self):
        return not self.failures and not self.crashes

    def to_json(self):
        d = dataclasses.asdict(self)
        d["by_op"] = dict(self.by_op)
        d["by_mode"] = dict(self.by_mode)
        d["clean"] = self.clean
        return d


def reproducer(seed, index):
    return f"python -m tests.fuzz --repro {seed}:{index}"


def _worker_command(seed, start, stop, ops):
    cmd = [sys.executable, "-m", "tests.fuzz.worker", "--seed", str(seed), "--start", str(start), "--stop", str(stop)]
    if ops:
        cmd += ["--ops", ",".join(ops)]
    return cmd


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class _Slot:
    """One worker process working through a range, restarted after a crash."""

    def __init__(self, report, lock, ops, case_timeout, deadline):
        self.report = report
        self.lock = lock
        self.ops = ops
        self.case_timeout = case_timeout
        self.deadline = deadline

    def run_range(self, seed, start, stop):
        while start < stop:
            start = self._run_process(seed, start, stop)

    def _run_process(self, seed, start, stop):
        """Runs one process over [start, stop); returns where the next process must start."""
        proc = subprocess.Popen(_worker_command(seed, start, stop, self.ops), cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        stderr_tail = collections.deque(maxlen=40)
        threading.Thread(target=_drain, args=(proc.stderr, stderr_tail), daemon=True).start()
        current, buf, last = None, b"", time.monotonic()
        fd = proc.stdout.fileno()
        ended = verdicts = False
        while True:
            timeout = self.case_timeout * (1 if verdicts else 4)  # the first case also imports TensorFlow
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    last = time.monotonic()
                    msg = json.loads(line)
                    if "start" in msg:
                        current = msg["start"]
                    elif "end" in msg:
                        ended = True
                    elif "i" in msg:
                        self._record(seed, msg)
                        current, verdicts = None, True
                out_of_time = self.deadline is not None and time.monotonic() > self.deadline
                if (out_of_time or STOP.is_set()) and not ended:
                    _kill(proc)
                    proc.wait()
                    return stop  # out of time: the unfinished case is not counted
            elif STOP.is_set():
                _kill(proc)
                proc.wait()
                return stop
            elif time.monotonic() - last > timeout:
                _kill(proc)
                proc.wait()
                return self._crash(seed, current, start, "hang", f"no progress for {timeout:.0f} s", stderr_tail)
        rc = proc.wait()
        if ended and rc == 0:
            return stop
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
        return self._crash(seed, current, start, "crash", how, stderr_tail)

    def _crash(self, seed, current, start, kind, how, stderr_tail):
        index = current if current is not None else start
        try:
            summary = cases.generate(seed, index, **({"ops": tuple(self.ops)} if self.ops else {})).summary()
        except Exception as exc:  # noqa: BLE001
            summary = f"(could not regenerate: {exc})"
        entry = {"seed": seed, "index": index, "kind": kind, "how": how, "summary": summary,
                 "reproducer": reproducer(seed, index), "stderr": "".join(stderr_tail)[-3000:]}
        with self.lock:
            self.report.crashes.append(entry)
            self.report.cases += 1
            self.report.restarts += 1
        return index + 1

    def _record(self, seed, msg):
        with self.lock:
            r = self.report
            r.cases += 1
            r.by_op[msg["op"]] += 1
            r.by_mode[msg["mode"]] += 1
            if msg["status"] == "pass":
                if msg["kind"] == "ok":
                    r.passed_ok += 1
                else:
                    r.passed_error += 1
                r.denormal_modes += bool(msg.get("denormal_modes"))
            else:
                msg["reproducer"] = reproducer(seed, msg["i"])
                r.failures.append(msg)


def _drain(stream, tail):
    for line in iter(stream.readline, b""):
        tail.append(line.decode(errors="replace"))


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(seed, count=None, minutes=None, workers=1, batch=2000, ops=None, case_timeout=120.0, progress=None,
        first=0):
    """Runs cases first.. of `seed`: `count` of them, or batches until `minutes` have passed."""
    report = Report(seed=seed)
    lock = threading.Lock()
    deadline = time.monotonic() + minutes * 60 if minutes else None
    t0 = time.monotonic()
    chunks = queue.Queue()
    if count is not None:
        for a in range(first, first + count, batch):
            chunks.put((a, min(first + count, a + batch)))
    next_start = [first + (count or 0)]

    def take():
        if STOP.is_set():
            return None
        try:
            return chunks.get_nowait()
        except queue.Empty:
            if deadline is None or time.monotonic() > deadline:
                return None
            with lock:
                a = next_start[0]
                next_start[0] += batch
            return a, a + batch

    def slot_main():
        slot = _Slot(report, lock, ops, case_timeout, deadline)
        while True:
            job = take()
            if job is None:
                return
            slot.run_range(seed, *job)
            if progress:
                with lock:
                    progress(report, time.monotonic() - t0)

    threads = [threading.Thread(target=slot_main) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=1.0)  # stays responsive to signals
    report.seconds = round(time.monotonic() - t0, 1)
    return report
