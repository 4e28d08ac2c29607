"""Atomic writes and run directories: a reader never sees a half-written file or a run directory that looks
complete; a failed write keeps what was written and says where."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: runs take no lock
    fcntl = None

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; the file should read like any other the user writes
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class AlreadyLocked(BlockingIOError):
    """Another process holds the lock."""


@contextmanager
def exclusive_lock(path: Path, wait: bool = False):
    """Hold an OS lock (flock) on `path` for the block. Where another process holds it: raise AlreadyLocked at
    once, or with `wait`, wait until it is released. The kernel drops a lock when its holder ends, however it
    ends, so a killed process leaves none behind; the file (holding the holder's pid, for the message) is removed
    on release. Where flock is missing (Windows), no lock is taken."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            if not wait:
                os.close(fd)
                raise AlreadyLocked(f"{path} is held by process {holder}") from None
            log.info("waiting for process %s, which holds %s", holder, path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:  # interrupted while waiting
                os.close(fd)
                raise
        try:  # a holder that released it may have removed the file we opened: only the file at `path` counts
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while held: a process that opened it before finds it gone, opens anew
        os.close(fd)


class RunWriteError(OSError):
    """Writing a run failed (disk full, permission); what was written is kept in a staging directory."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove staging directories of `final` left by processes that no longer run; returns them."""
    removed = []
    for staging in final.parent.glob(f".{final.name}.incomplete-*"):
        suffix = staging.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and not _process_alive(int(suffix)):
            log.warning("removing %s, the unfinished output of a process that no longer runs", staging)
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


@contextmanager
def staged_directory(final: Path, overwrite: bool, recovery_hint: str = ""):
    """Yield a staging directory that becomes `final` only when the block finishes without error.

    A write failure (OSError) keeps the staging directory and names it; any other exception removes it. With
    `overwrite`, an existing `final` is renamed aside first and deleted only once the new one is in place."""
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; choose another name or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    staging = final.with_name(f".{final.name}.incomplete-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except OSError as err:
        raise RunWriteError(f"writing {final} failed: {err}. What was written is kept in {staging}"
                            f"{recovery_hint}") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = None
    if final.exists():
        aside = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    staging.rename(final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
