"""Lock files on a shared filesystem: one process at a time trains a run or builds a plan cache.

``run_experiment`` and the plan cache of teacher outputs (:func:`kd_utils.plans.teacher_outputs`) take
a :class:`FileLock` before they compute anything, so several processes -- a sweep's workers on one or
many machines, or two notebooks -- asking for the same run at once train it once: the others wait,
then reuse the record the first one wrote.

Protocol (portable to NFS and cluster filesystems, which do not all honour ``flock``):

* **Take**: ``os.open(path, O_CREAT | O_EXCL)``. Exactly one process creates the file; it writes its
  owner: host, boot id, pid, the pid's start time, a random token and a heartbeat time.
* **Hold**: a daemon thread rewrites the owner (a new heartbeat time) every ``heartbeat`` seconds,
  through the descriptor it created the file with, so it can only ever touch its own file.
* **Wait**: a process that cannot create the file polls it (``poll`` seconds, backing off to 5 s)
  and, once the file is gone, tries again; it then re-checks whether the result it wanted exists.
* **Take over a dead owner's lock**: on the owner's host (same host name and boot id) as soon as its
  pid is gone (or now belongs to a newer process); from another host when the file has not changed
  for ``stale_after`` seconds *as seen by the waiter's own clock* (so clock skew between machines
  cannot make a live lock look dead). Breaking is serialised by a second ``O_EXCL`` file,
  ``<lock>.break``: the breaker re-reads the lock under it and removes it only when it is still the
  very file judged dead (same inode and bytes). A ``.break`` file left by a breaker that died is
  removed after ``stale_after``.
* **Release**: the owner removes the file if it is still its own (same inode).

Records themselves are written atomically (:mod:`kd_utils.fileio`; ``run.json`` last), so a process
killed mid-run leaves no record, only its lock, which the next process takes over.

Defaults come from ``$KD_LOCK_POLL_S`` (0.5), ``$KD_LOCK_HEARTBEAT_S`` (10) and ``$KD_LOCK_STALE_S``
(120); keep ``stale_after`` well above ``heartbeat``.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

POLL_ENV, HEARTBEAT_ENV, STALE_ENV = "KD_LOCK_POLL_S", "KD_LOCK_HEARTBEAT_S", "KD_LOCK_STALE_S"
MAX_POLL_S = 5.0

# What this process's locks did (read by kd_utils.sweep to report waits and take-overs per task).
STATS = {"acquired": 0, "waited": 0, "waited_s": 0.0, "taken_over": 0}


class LockLost(RuntimeWarning):
    """A held lock's file was removed or replaced by another process (it judged this owner dead)."""


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds, got {os.environ.get(name)!r}") from None
    if not value > 0:
        raise ValueError(f"${name} must be > 0, got {value}")
    return value


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, Linux), or None where unknown: with the pid it
    tells a live owner from a newer process that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


HOST = socket.gethostname()
BOOT_ID = _boot_id()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def owner_alive(owner: dict) -> bool | None:
    """True/False when it can be decided here (the owner ran on this host), None for another host."""
    if owner.get("host") != HOST or owner.get("boot_id", "") != BOOT_ID:
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    start = owner.get("pid_start")
    now = _pid_start(pid)
    return not (start is not None and now is not None and start != now)


def describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"{owner.get('host', '?')} pid {owner.get('pid', '?')}"


class FileLock:
    """An exclusive lock file (see the module docstring); a context manager.

    ``with FileLock(path, what="run kd-s0") as lock: ...`` waits as long as it takes;
    ``lock.waited`` says whether another process held it first (then re-check for its result) and
    ``lock.taken_over`` whether that process had died. ``timeout`` (seconds) raises ``TimeoutError``.
    ``notify(message)`` is called once when waiting starts (e.g. ``print``).
    """

    def __init__(self, path: str | os.PathLike, what: str = "", *, poll: float | None = None,
                 heartbeat: float | None = None, stale_after: float | None = None, timeout: float | None = None,
                 notify: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what or self.path.name
        self.poll = poll if poll is not None else _env_float(POLL_ENV, 0.5)
        self.heartbeat = heartbeat if heartbeat is not None else _env_float(HEARTBEAT_ENV, 10.0)
        self.stale_after = stale_after if stale_after is not None else _env_float(STALE_ENV, 120.0)
        self.timeout = timeout
        self.notify = notify
        self.waited = False
        self.waited_s = 0.0
        self.taken_over = False
        self.lost = False
        self.owner: dict | None = None  # the holder we waited for (last seen)
        self._fd: int | None = None
        self._ino: int | None = None
        self._info: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple] = {}  # path -> (signature, monotonic time it was first seen)

    # ------------------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        if self.held:
            raise RuntimeError(f"lock {self.path} is already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        delay = self.poll
        while True:
            if self._try_create():
                break
            seen = self._look(self.path)
            if seen is not None:
                raw, ino = seen
                owner = _parse(raw)
                self.owner = owner or self.owner
                if self._dead(self.path, raw, ino, owner) and self._break(raw, ino):
                    continue
            if not self.waited:
                self.waited = True
                STATS["waited"] += 1
                if self.notify is not None:
                    self.notify(f"[waiting] {self.what}: in progress in {describe(self.owner)}")
            if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                raise TimeoutError(f"{self.what}: lock {self.path} still held by {describe(self.owner)} after "
                                   f"{self.timeout:.0f} s")
            time.sleep(delay)
            delay = min(MAX_POLL_S, delay * 1.5)
        self.waited_s = time.monotonic() - t0 if self.waited else 0.0
        STATS["acquired"] += 1
        STATS["waited_s"] += self.waited_s
        return self

    def release(self) -> None:
        """Remove the lock file if it is still this owner's (idempotent)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._still_ours():
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------------------------------
    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        now = time.time()
        self._info = {"host": HOST, "boot_id": BOOT_ID, "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                      "token": uuid.uuid4().hex, "what": self.what, "created": now, "heartbeat": now}
        self._write_info()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _write_info(self) -> None:
        data = json.dumps(self._info).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._still_ours():
                    if not self.lost:
                        self.lost = True
                        import warnings
                        warnings.warn(f"{self.what}: lock {self.path} was taken over by another process (this one "
                                      "was judged dead); both may now compute the same result", LockLost)
                    continue
                self._info["heartbeat"] = time.time()
                self._write_info()
            except OSError:  # a flaky filesystem: try again next beat
                continue

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _look(path: Path) -> tuple[bytes, int] | None:
        """(contents, inode) of a lock file, or None when it is gone."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.read(fd, 1 << 16), os.fstat(fd).st_ino
        finally:
            os.close(fd)

    def _unchanged_for(self, path: Path, signature: tuple) -> float:
        """Seconds (this process's monotonic clock) that ``path`` has shown ``signature``."""
        now = time.monotonic()
        prev = self._seen.get(str(path))
        if prev is None or prev[0] != signature:
            self._seen[str(path)] = (signature, now)
            return 0.0
        return now - prev[1]

    def _dead(self, path: Path, raw: bytes, ino: int, owner: dict | None) -> bool:
        if owner is not None:
            alive = owner_alive(owner)
            if alive is not None:
                return not alive
        # another host, or a file not (yet) readable: dead when it stopped changing long enough ago
        return self._unchanged_for(path, (ino, raw)) >= self.stale_after

    def _break(self, raw: bytes, ino: int) -> bool:
        """Remove the dead owner's lock file -- if it is still that very file -- under ``<lock>.break``;
        False when another waiter is breaking it."""
        brk = self.path.with_name(self.path.name + ".break")
        try:
            bfd = os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another waiter is breaking it; its .break file outlives it only if it died
            seen = self._look(brk)
            if seen is not None and self._unchanged_for(brk, (seen[1], seen[0])) >= self.stale_after:
                try:
                    os.unlink(brk)
                except FileNotFoundError:
                    pass
            return False
        try:
            os.write(bfd, json.dumps({"host": HOST, "pid": os.getpid()}).encode())
            now = self._look(self.path)
            if now is not None and now == (raw, ino):
                os.unlink(self.path)
                self.taken_over = True
                STATS["taken_over"] += 1
                self._seen.pop(str(self.path), None)
        finally:
            os.close(bfd)
            try:
                os.unlink(brk)
            except FileNotFoundError:
                pass
        return True


def _parse(raw: bytes) -> dict | None:
    try:
        owner = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return None  # being written, or left empty by an owner killed at once
    return owner if isinstance(owner, dict) else None


def read_owner(path: str | os.PathLike) -> dict | None:
    """The owner recorded in a lock file (None when absent or unreadable)."""
    seen = FileLock._look(Path(path))
    return None if seen is None else _parse(seen[0])
