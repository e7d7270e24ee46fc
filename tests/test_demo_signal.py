"""``lerf-ros demo`` stopped by a signal while it follows training: it stops its nodes and the
replay, exits with 130 and prints "interrupted", not a traceback (rclpy's signal handlers shut the
ROS context down under the client's spin; ``LerfClient`` turns that into ``Interrupted``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from ros_helpers import lerf_ros_argv, ros_env

pytest.importorskip("rclpy")


def processes_mentioning(text: str) -> list:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append((int(entry), cmd))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stops_quietly_on_a_signal(tmp_path, sig):
    out = tmp_path / "demo"
    env = ros_env(0, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    log_out, log_err = open(tmp_path / "stdout", "wb"), open(tmp_path / "stderr", "wb")
    argv = lerf_ros_argv("demo", "--out", str(out), "--steps", "100000", "--rate", "8")
    p = subprocess.Popen(argv, env=env, stdout=log_out, stderr=log_err, start_new_session=True)
    try:
        deadline = time.monotonic() + 240.0
        while time.monotonic() < deadline and p.poll() is None:
            # Following training: the client spins on /lerf/status under its progress bar.
            if "training" in (tmp_path / "stderr").read_text(errors="replace"):
                break
            time.sleep(0.2)
        assert p.poll() is None, (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text()
        time.sleep(1.0)
        os.kill(p.pid, sig)  # the demo process alone, as a terminal's Ctrl-C or a supervisor would
        code = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log_out.close()
        log_err.close()
    err = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 130, (code, err)
    assert "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1] == "interrupted", err
    # The nodes (their params file) and the replay (the scene folder) are gone too.
    deadline = time.monotonic() + 10.0
    while processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(out)), processes_mentioning(str(out))
