"""One writer per output: a lease file under ``<out>/<split>/`` held by the running job.

The lease names its holder (host, pid, start time) and carries a heartbeat the holder refreshes.
A second run refuses while the lease is live; a stale lease (no heartbeat for ``timeout_s``, or a
holder pid that no longer exists on this host) is taken over, and says so in the log. On a local
filesystem the first lease is created exclusively (O_EXCL); on an object store, where there is no
create-if-absent, the lease is written and read back after a pause (best effort against two runs
starting within the same second).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid

from mava import schema
from mava.folder import SplitDir, UnreadableFile

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the output."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The lease of one run on one split folder; use :meth:`acquire` and :meth:`release`."""

    def __init__(self, out: SplitDir, timeout_s: float = 300.0):
        self.dir = out
        self.timeout_s = float(timeout_s)
        self.token = uuid.uuid4().hex
        self.started = _now()
        self.lost = False
        self._last_tick = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return self.dir.url_of(schema.LEASE_JSON)

    def _record(self) -> dict:
        now = _now()
        return {schema.LEASE_HOST: socket.gethostname(), schema.LEASE_PID: os.getpid(), schema.LEASE_TOKEN: self.token,
                schema.LEASE_STARTED_AT: _iso(self.started), schema.LEASE_HEARTBEAT: now,
                schema.LEASE_HEARTBEAT_AT: _iso(now), schema.LEASE_TIMEOUT_S: self.timeout_s}

    def read(self) -> dict | None:
        """The lease on disk (None when there is none; {} when it is unreadable)."""
        try:
            return self.dir.read_json(schema.LEASE_JSON)
        except UnreadableFile:
            return {}

    def stale_reason(self, holder: dict) -> str | None:
        """Why ``holder`` no longer holds the output, or None when it is live."""
        if not holder:
            return "the lease file is unreadable"
        try:
            age = _now() - float(holder.get(schema.LEASE_HEARTBEAT, 0))
            timeout = float(holder.get(schema.LEASE_TIMEOUT_S, self.timeout_s))
        except (TypeError, ValueError):
            return "the lease file is malformed"
        if holder.get(schema.LEASE_HOST) == socket.gethostname() and isinstance(holder.get(schema.LEASE_PID), int) \
                and not _pid_alive(holder[schema.LEASE_PID]):
            return f"its process {holder[schema.LEASE_PID]} on this host is gone"
        if age > max(timeout, self.timeout_s):
            return f"no heartbeat for {age:.0f} s"
        return None

    def acquire(self) -> "Lease":
        """Take the lease or raise LeaseHeld naming the holder; starts the heartbeat."""
        self.dir.makedirs("", exist_ok=True)
        holder = self.read()
        if holder is not None:
            why = self.stale_reason(holder)
            if why is None:
                raise LeaseHeld(
                    f"{self.path} is held by pid {holder.get(schema.LEASE_PID)} on host "
                    f"{holder.get(schema.LEASE_HOST)} (since {holder.get(schema.LEASE_STARTED_AT)}, last heartbeat "
                    f"{holder.get(schema.LEASE_HEARTBEAT_AT)}): another run is writing this output. Wait for it to finish, or delete the lease if that run is gone.")
            log.warning("taking over the stale lease %s of pid %s on %s: %s", self.path, holder.get(schema.LEASE_PID),
                        holder.get(schema.LEASE_HOST), why)
            self.dir.write_atomic(schema.LEASE_JSON, json.dumps(self._record()).encode())
        elif self.dir.is_local:
            try:
                fd = os.open(self.dir.local_path(schema.LEASE_JSON), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self.acquire()  # somebody was faster: judge their lease
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(self._record()).encode())
                f.flush()
                os.fsync(f.fileno())
        else:
            self.dir.write_atomic(schema.LEASE_JSON, json.dumps(self._record()).encode())
            time.sleep(1.0)
        if (self.read() or {}).get(schema.LEASE_TOKEN) != self.token:
            raise LeaseHeld(f"{self.path} was taken by another run that started at the same time")
        self._thread = threading.Thread(target=self._beat, name="mava-lease", daemon=True)
        self._thread.start()
        return self

    def touch(self) -> None:
        """The holder is alive and working: the heartbeat goes on only while this is called at least once
        per ``timeout_s`` (a run that hangs lets its lease go stale, so the next run can take over)."""
        self._last_tick = time.monotonic()

    def _beat(self) -> None:
        period = max(0.5, self.timeout_s / 5)
        stale = False
        while not self._stop.wait(period):
            if time.monotonic() - self._last_tick > self.timeout_s:
                if not stale:
                    log.warning("the run holding %s has not made a step for %.0f s: the lease is no longer "
                                "refreshed", self.path, time.monotonic() - self._last_tick)
                stale = True
                continue
            stale = False
            try:
                if (self.read() or {}).get(schema.LEASE_TOKEN) != self.token:
                    self.lost = True
                    log.error("lost the lease %s to another run", self.path)
                    return
                self.dir.write_atomic(schema.LEASE_JSON, json.dumps(self._record()).encode())
            except OSError as exc:
                log.warning("could not refresh the lease %s: %s", self.path, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if (self.read() or {}).get(schema.LEASE_TOKEN) == self.token:
                self.dir.rm(schema.LEASE_JSON)
        except OSError as exc:
            log.warning("could not remove the lease %s: %s", self.path, exc)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
