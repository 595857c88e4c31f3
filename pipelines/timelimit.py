"""Time limits per item, so that one pathological input becomes an error row, not a stuck actor.

Reading: a decoder cannot be interrupted from Python (PDFium rendering a page of a million curves,
a stalled object-store read), and PDFium must not be used from two threads at once, so an
abandoned thread is no answer. ``TimedLoader`` runs the job's ``RowLoader`` in a child process
(``python -m pipelines.timelimit``) and kills it when a row is over its limit; the next row starts
a fresh child. A child that dies (a decoder crash) costs its row only.

Answering: ``DeadlineAdapter`` checks the deadline before every model call, so SPOT-E's loop stops
between forward passes once an item is over its limit.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from .stages import error_row, load_batch
from .storage import stable_cwd

# A child starts by importing numpy, PIL, pyarrow...: on a loaded machine that takes seconds, and it
# is not the row's time
CHILD_START_SECONDS = 300.0


class ItemTimeout(RuntimeError):
    """An item went over its time limit; the message says which stage and after how long."""


class TimedLoader:
    """Ray Data CPU stage: ``loader(**loader_kwargs).load(row)`` in a child process, at most
    ``timeout_s`` seconds a row (``timeout_s`` <= 0 or None: no limit, in this process)."""

    def __init__(self, loader: type, loader_kwargs: dict | None = None, timeout_s: float | None = 600.0):
        self.loader_cls, self.loader_kwargs = loader, dict(loader_kwargs or {})
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self._child: _Child | None = None
        self._local = None if self.timeout_s else loader(**self.loader_kwargs)

    def load(self, row: dict) -> dict:
        if self._local is not None:
            return self._local.load(row)
        if row.get("status") == "error":
            return error_row(row, row.get("error") or "failed upstream")
        if self._child is None:
            self._child = _Child(self.loader_cls, self.loader_kwargs)
        try:
            return self._child.ask(row, self.timeout_s)
        except ItemTimeout as err:
            self._stop_child()
            return error_row(row, f"timeout: {err}")
        except _ChildDied as err:
            self._stop_child()
            return error_row(row, f"reader crashed on this item: {err}")

    def _stop_child(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def __call__(self, batch: dict) -> dict:
        return load_batch(self.load, batch)

    def __del__(self):
        self._stop_child()


class _ChildDied(RuntimeError):
    pass


class _Child:
    """One loader in a child process, spoken to over a socket pair (pickled rows in, rows out)."""

    def __init__(self, loader: type, loader_kwargs: dict):
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        cwd = stable_cwd()
        # the child imports the loader from wherever this process found it (a Ray working_dir, a checkout);
        # "" in sys.path is the working directory, spelled out so the child does not resolve it itself
        paths = [p or cwd for p in sys.path] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(os.path.join(cwd, p) for p in paths if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.timelimit", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, cwd=cwd)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(_dumps((loader, loader_kwargs)))
        if not self.conn.poll(CHILD_START_SECONDS):
            self.stop()
            raise RuntimeError(f"the reader process did not start within {CHILD_START_SECONDS:.0f} s")
        try:
            self.conn.recv()  # "ready", or the loader's own start-up error
        except EOFError as err:
            code = self.proc.wait()
            raise RuntimeError(f"the reader process exited at start (exit code {code})") from err

    def ask(self, row: dict, timeout_s: float) -> dict:
        t0 = time.monotonic()
        try:
            self.conn.send(row)
            if not self.conn.poll(timeout_s):
                raise ItemTimeout(f"reading {row.get('source')} took longer than {_seconds(timeout_s)} "
                                  f"(--item-timeout-seconds); the reader was stopped")
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as err:
            code = self.proc.poll()
            raise _ChildDied(f"the reader process ended (exit code {code}) after "
                             f"{time.monotonic() - t0:.1f} s") from err

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()


def _seconds(s: float) -> str:
    return f"{s:g} s"


def _dumps(payload: tuple) -> bytes:
    """(loader class, kwargs) pickled: by reference where the class is importable; a class defined in a
    script (``__main__``, not importable in the child) by value through cloudpickle, which plain
    ``pickle.loads`` reads back."""
    loader = payload[0]
    if loader.__module__ != "__main__":
        try:
            return pickle.dumps(payload)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
    from ray import cloudpickle

    return cloudpickle.dumps(payload)


def _serve(fd: int) -> None:
    """The child: build the loader sent first, then answer rows until the parent closes."""
    conn = Connection(fd)
    try:
        loader_cls, kwargs = pickle.loads(conn.recv_bytes())
        loader = loader_cls(**kwargs)
        conn.send("ready")
        while True:
            conn.send(loader.load(conn.recv()))
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        return  # the parent closed or died, or a terminal's Ctrl-C reached its group: a job stopping


class DeadlineAdapter:
    """An adapter whose model calls raise ``ItemTimeout`` once ``deadline`` (time.monotonic()) has passed;
    everything else is the wrapped adapter's."""

    MODEL_CALLS = ("choice_logprobs", "generate", "generate_agreed", "teacher_forced", "relevance")

    def __init__(self, adapter, deadline: float, limit_s: float):
        self._adapter, self._deadline, self._limit_s = adapter, deadline, limit_s
        self._passes0 = adapter.forward_passes

    def __getattr__(self, name: str):
        attr = getattr(self._adapter, name)
        if name not in self.MODEL_CALLS:
            return attr

        def checked(*args, **kwargs):
            if time.monotonic() > self._deadline:
                raise ItemTimeout(f"answering took longer than {_seconds(self._limit_s)} (--item-timeout-seconds); "
                                  f"stopped after {self._adapter.forward_passes - self._passes0} forward passes")
            return attr(*args, **kwargs)

        return checked


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
