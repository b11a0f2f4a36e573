"""Exclusive locks around every read-modify-write of a store's manifest and of the registry.

Why: two commands that each read a manifest, change it and write it back (split, pack, stats,
``mftrain fit`` preparing a store) lose one another's change, or leave a split on disk that the
manifest does not list. Each such writer holds :func:`locked` on a lock file (``STORE/.lock``,
``stores.json.lock`` beside the registry) and re-reads what it changes inside the lock; a second
writer waits for the first (a line on stderr says so) and fails with a one-line error after
``MFKIT_LOCK_TIMEOUT`` seconds (default 3600). Readers take no lock: every file they read is
replaced atomically.

The lock is ``fcntl.flock`` on an open file: the kernel releases it when the process dies, so a
killed writer never leaves a stale lock. It is re-entrant within a process (a split made while
``mftrain fit`` holds the store's lock does not wait for itself).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from mfdata.errors import MfkitError
from mfdata.files import writing

LOCK_FILE = ".lock"  # inside a store
_POLL_S = 0.05
_held: dict[tuple[int, str], int] = {}  # (pid, lock file realpath) -> depth; a fork holds none


class LockTimeout(MfkitError, TimeoutError):
    """Another process held a lock for longer than ``MFKIT_LOCK_TIMEOUT`` seconds."""


def _timeout() -> float:
    try:
        return float(os.environ.get("MFKIT_LOCK_TIMEOUT", "3600"))
    except ValueError:
        return 3600.0


@contextmanager
def locked(lock_file: Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock on ``lock_file`` (created if missing) for the block.

    ``what`` names the locked thing in messages (a store path, the registry).
    """
    key = (os.getpid(), os.path.realpath(lock_file))
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _open_lock_file(lock_file)
    try:
        _acquire(fd, lock_file, what)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock_file(lock_file: Path) -> int:
    """The lock file, created if missing. One this process may only read locks as well (flock
    needs no write access): on a read-only store a command that finds nothing to write works."""
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if lock_file.is_file():
            return os.open(lock_file, os.O_RDONLY)
        with writing(lock_file.parent):  # the same error, in one line when it is a permission
            raise


def _acquire(fd: int, lock_file: Path, what: str) -> None:
    """flock ``fd``, waiting (with one note on stderr) up to the timeout."""
    deadline = time.monotonic() + _timeout()
    noted = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{what}: another mfkit process is still writing it (lock {lock_file} held "
                f"longer than {_timeout():g} s, MFKIT_LOCK_TIMEOUT); try again when it is done"
            )
        if not noted:
            print(f"mfkit: waiting for another process writing {what}", file=sys.stderr)
            noted = True
        time.sleep(_POLL_S)


def store_lock(root: Path) -> AbstractContextManager[None]:
    """The lock of the store at ``root`` (``root/.lock``)."""
    return locked(Path(root) / LOCK_FILE, str(root))


@contextmanager
def claimed_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory ``parent/PREFIX<8 hex digits>`` that this process holds (``flock`` on the
    directory itself) until the block ends.

    A temporary directory nobody holds belongs to a process that died: :func:`remove_unclaimed`
    removes it while holding it, and a directory removed before its writer held it is made again
    under a new name, so a live writer's directory is never removed.
    """
    while True:
        path = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
        with writing(parent):
            path.mkdir()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield path
    finally:
        os.close(fd)


def remove_unclaimed(directories: Iterable[Path]) -> list[Path]:
    """Remove each directory no live process holds (:func:`claimed_directory`); return them."""
    removed = []
    for path in directories:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)  # held: its writer cannot be alive
            removed.append(path)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
    return removed
