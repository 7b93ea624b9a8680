"""One live trainer per run folder: an advisory lock (fcntl.flock) on `<run>/trainer.lock`, held for its life.

    lock = acquire(run_dir)          # RunBusyError naming the live pid if another process holds it
    lock.hand_to_child()             # Popen(..., pass_fds=lock.pass_fds, env={**env, **lock.child_env()})
    holder_pid(run_dir)              # the pid that holds it, or None

The kernel drops a flock when the last descriptor of its open file goes away, so a trainer that crashes or is
killed -9 frees its run at once, and nothing stale is ever left to clean up. The launcher takes the lock before it
starts a trainer and hands the same descriptor down to the child (no window in which two launches both see the
folder free); a trainer started from a terminal, or under Slurm, takes it itself (`hold_for_this_process`).
The file's text is the holder's pid, for the refusal's message; the lock, not the text, is the truth.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "trainer.lock"
INHERITED_FD_ENV = "CAPTIONLAB_RUN_LOCK_FD"  # set by the launcher: the child already holds the lock on this fd


class RunBusyError(RuntimeError):
    """Another live process trains this run folder; the message names its pid."""

    def __init__(self, run_dir: Path, pid: int | None):
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"run {Path(run_dir).name} is already being trained by {who} (it holds "
                         f"{Path(run_dir) / LOCK_NAME}); stop it first, or wait for it to end")


class RunLock:
    """A held lock on one run folder; `release` (or the process ending) frees it."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.fd = Path(run_dir), fd

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.fd,)

    def child_env(self) -> dict[str, str]:
        return {INHERITED_FD_ENV: str(self.fd)}

    def record_holder(self, pid: int) -> None:
        """Write the pid that will hold the lock (the trainer's, once started) into the lock file."""
        text = f"{pid}\n".encode()
        os.pwrite(self.fd, text, 0)  # overwrite, then cut: a reader never sees an empty file in between
        os.ftruncate(self.fd, len(text))

    def release(self) -> None:
        """Close this process's descriptor: the lock ends here unless a child inherited it (then the child keeps
        it until it ends)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def acquire(run_dir: Path) -> RunLock:
    """Take the run's lock without waiting; RunBusyError (naming the holder's pid) if a live process has it."""
    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        for _ in range(20):  # the holder took the lock an instant ago and is writing its pid
            if pid is not None:
                break
            time.sleep(0.01)
            pid = _read_pid(fd)
        os.close(fd)
        raise RunBusyError(run_dir, pid) from None
    lock = RunLock(run_dir, fd)
    lock.record_holder(os.getpid())
    return lock


def holder_pid(run_dir: Path) -> int | None:
    """The pid of the live process that holds the run's lock, or None when no one does."""
    path = lock_path(run_dir)
    if not path.exists():
        return None
    try:
        lock = acquire(run_dir)
    except RunBusyError as busy:
        return busy.pid or -1
    except OSError:
        return None
    lock.release()
    return None


def hold_for_this_process(run_dir: Path) -> RunLock | None:
    """Called by the trainer at start: keep the lock the launcher handed down, else take it (RunBusyError if held).

    Returns the held lock (keep a reference for the process's life), or None when the launcher's descriptor is
    held by a parent (a rank under `accelerate launch`, whose launcher process holds the run)."""
    inherited = os.environ.pop(INHERITED_FD_ENV, None)
    if inherited is not None:
        fd = int(inherited)
        if _is_lock_of(fd, run_dir):
            os.set_inheritable(fd, False)  # the lock stays with the trainer, not with what it spawns
            lock = RunLock(run_dir, fd)
            lock.record_holder(os.getpid())
            return lock
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return None  # a rank: the accelerate launcher the launcher started holds the run
    return acquire(run_dir)


def _is_lock_of(fd: int, run_dir: Path) -> bool:
    try:
        held, expected = os.fstat(fd), os.stat(lock_path(run_dir))
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (expected.st_dev, expected.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
