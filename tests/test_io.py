"""Atomic writes and locks (io.py)."""

import os
import signal
import subprocess
import sys

import pytest

from p2pdefense.io import AlreadyLocked, exclusive_lock

HOLD = """
import sys, time
from pathlib import Path
from p2pdefense.io import exclusive_lock
with exclusive_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_held_lock_is_refused_at_once_and_a_killed_holder_leaves_none(tmp_path):
    path = tmp_path / "runs" / ".r.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyLocked, match=f"held by process {holder.pid}"), exclusive_lock(path):
            pass
        assert path.exists()  # a refused attempt leaves the holder's file alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # SIGKILL gave the holder no time to clean up: the file stays, the lock does not
    with exclusive_lock(path):
        assert path.read_text() == str(os.getpid())
        with pytest.raises(AlreadyLocked), exclusive_lock(path):  # a second open in this process conflicts too
            pass
    assert not path.exists()
    with exclusive_lock(path):  # taken again after a release
        assert path.exists()


HOLD_BRIEFLY = """
import sys, time
from pathlib import Path
from p2pdefense.io import exclusive_lock
with exclusive_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(1.0)
    Path(sys.argv[2]).write_text("finished")
"""


def test_a_waiting_lock_is_taken_when_its_holder_releases_it(tmp_path):
    path, finished = tmp_path / ".probe.lock", tmp_path / "finished"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_BRIEFLY, str(path), str(finished)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with exclusive_lock(path, wait=True):
            assert finished.read_text() == "finished"  # not before the holder's block ended
            assert path.read_text() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait()
    assert not path.exists()
