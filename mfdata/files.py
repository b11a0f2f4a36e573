"""Small file operations every writer shares: checksums and atomic replacement of a file.

A file written with :func:`atomic_write_text` or :func:`atomic_file` is either the old file or
the complete new one, never a mixture: the content goes to a temporary sibling with a random name,
created exclusively (``O_EXCL``, so a file or symlink planted there is never followed), is flushed
to disk, and is renamed over the target. A killed writer's temporary file is removed by the
next write of the same target (a writer holds a lock on its own, so a live one's never is).

:func:`kill_point` marks the instants between the steps of a commit (before a rename, between a
rename and the manifest that commits it); the tests of interrupted writes kill a real process
there, and nothing else uses it.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mfdata.errors import MfkitError

KILL_AT = "MFKIT_TEST_KILL_AT"  # test hook: the kill point at which the process kills itself


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``$MFKIT_TEST_KILL_AT`` is ``name`` (tests only)."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class NotWritable(MfkitError, PermissionError):
    """A file or directory mfkit must write is read-only to this user or on a read-only file
    system (reading commands keep working there)."""


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Report 'permission denied' or 'read-only file system' while writing ``path`` in one line
    naming it, instead of a traceback."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            raise NotWritable(
                f"{path}: cannot write here ({exc.strerror}); this command needs write access"
            ) from exc
        raise


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _claimed_temporary(target: Path) -> tuple[int, Path]:
    """A new temporary file beside ``target``, locked (``flock``) by this process while it
    writes: a lock that :func:`_remove_abandoned` can take means its writer is gone."""
    while True:
        with writing(target.parent):
            fd, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".partial", dir=target.parent
            )
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(name, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd, Path(name)
        except FileNotFoundError:
            pass  # removed as abandoned between its creation and the lock: take another name
        os.close(fd)


def _remove_abandoned(target: Path) -> None:
    """Remove the temporary files of writers of ``target`` that were killed (unlocked ones)."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)  # while holding its lock: never a live writer's file
        except OSError:
            pass  # locked: its writer is alive
        finally:
            os.close(fd)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` that replaces it when the block succeeds.

    The temporary file exists (empty) when the block starts; on an exception it is removed and
    ``target`` is untouched. Temporary files that killed writers of ``target`` left behind are
    removed first.
    """
    target = Path(target)
    _remove_abandoned(target)
    fd, tmp = _claimed_temporary(target)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        kill_point(f"replace:{target.name}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Replace ``target`` with ``text`` (UTF-8) atomically."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove(path: Path) -> None:
    """Remove a leftover file or directory (a symlink itself, never what it points to)."""
    with writing(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
