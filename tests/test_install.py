"""The node executables as colcon installs them (``install/lerf_ros/lib/lerf_ros/...``, what
``ros2 run`` and the launch file start) run with the interpreter the package was built with, even
when the first ``python3`` on PATH lacks the package's dependencies (a ROS install's system Python
without torch, say).

The install space is the one ``scripts/setup.sh`` builds (``scripts/test.sh`` runs it first).
The processes are started as a user would: ``source install/setup.bash``, then the executable, with
a PATH whose first ``python3`` and ``python`` are an interpreter without torch.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ros_helpers import REPO_ROOT, process_output, ros_context, ros_env, start_process, stop_process, unique_domain_id

INSTALL = REPO_ROOT / "install"
LIB = INSTALL / "lerf_ros" / "lib" / "lerf_ros"
EXECUTABLES = ("trainer_node", "query_node", "lerf_node")
REBUILD = "the install space predates this check: rebuild it with scripts/setup.sh"


def interpreter_of(executable: Path) -> str:
    """The interpreter an installed executable starts: its shebang, or the one its sh launcher execs."""
    lines = executable.read_text().splitlines()
    if lines[0] == "#!/bin/sh":
        return shlex.split(lines[1])[1]  # '''exec' "/path/python" "$0" "$@"
    assert lines[0].startswith("#!"), f"{executable} has no shebang"
    return lines[0][2:].strip()


@pytest.fixture(scope="module")
def bare_bin(tmp_path_factory) -> Path:
    """A folder whose python3 and python are an interpreter that cannot import torch."""
    candidates = [shutil.which(n, path="/usr/bin:/bin:/usr/local/bin") for n in ("python3", "python")]
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", "import torch"], capture_output=True).returncode != 0:
            folder = tmp_path_factory.mktemp("bare_bin")
            for name in ("python3", "python"):
                os.symlink(exe, folder / name)
            return folder
    pytest.skip("every system python3 here can import torch: no interpreter without it to put first on PATH")


def installed_env(bare_bin: Path, domain: int) -> dict:
    """ROS environment for an installed executable: no source tree on PYTHONPATH (setup.bash adds the
    install space), the torch-less interpreter first on PATH."""
    env = ros_env(domain)
    env["PYTHONPATH"] = ""
    env["PATH"] = os.pathsep.join([str(bare_bin), env.get("PATH", "")])
    env.pop("VIRTUAL_ENV", None)
    return env


def as_installed(command: str) -> list:
    """argv of ``command`` run after ``source install/setup.bash``."""
    return ["bash", "-c", f"source {shlex.quote(str(INSTALL / 'setup.bash'))} && {command}"]


def test_installed_executables_start_the_build_interpreter():
    for name in EXECUTABLES:
        exe = LIB / name
        assert exe.is_file(), f"{exe} is missing: build the package with scripts/setup.sh"
        assert os.access(exe, os.X_OK), f"{exe} is not executable"
        interp = interpreter_of(exe)
        assert "env" not in Path(interp.split()[0]).name, f"{exe} starts '{interp}' from PATH; {REBUILD}"
        assert os.path.isabs(interp) and os.access(interp, os.X_OK), f"{exe}: no interpreter at {interp}"
        probe = subprocess.run(
            [interp, "-c", "import torch, open_clip, timm, open3d, rclpy"], capture_output=True, text=True
        )
        assert probe.returncode == 0, f"{exe}'s interpreter {interp} lacks the dependencies: {probe.stderr[-500:]}"


def test_the_path_first_python_lacks_torch(bare_bin):
    # The precondition that makes the next tests mean something: `#!/usr/bin/env python3` would fail.
    env = installed_env(bare_bin, unique_domain_id())
    r = subprocess.run(["/usr/bin/env", "python3", "-c", "import torch"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr


def test_query_node_runs_as_installed_with_a_bare_python_first_on_path(bare_bin, tmp_path):
    domain = unique_domain_id()
    env = installed_env(bare_bin, domain)
    out = tmp_path / "out"
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{out}'\n    checkpoint_dir: '{out / 'checkpoints'}'\n"
        "    teacher:\n      kind: clip\n      random_weights: true\n      clip_model: test-tiny-vit\n"
    )
    # The package the node imports is the installed copy, not this source tree.
    where = subprocess.run(
        as_installed(
            f"{shlex.quote(interpreter_of(LIB / 'query_node'))} -c 'import lerf_ros; print(lerf_ros.__file__)'"
        ),
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert str(INSTALL) in where.stdout, f"lerf_ros imported from {where.stdout.strip()}, not the install space"

    p = start_process(
        as_installed(
            f"exec {shlex.quote(str(LIB / 'query_node'))} --ros-args --params-file {shlex.quote(str(params))}"
        ),
        env=env,
        cwd=tmp_path,
    )
    try:
        with ros_context(domain) as ctx:
            import rclpy

            from lerf_ros.srv import Query

            from ros_helpers import call, wait_for_service

            node = rclpy.create_node("install_probe", context=ctx)
            try:
                client = node.create_client(Query, "/lerf/query")
                up = wait_for_service(client, 180.0)
                assert up, f"/lerf/query never appeared; node output:\n{process_output(p)}"
                resp = call(node, client, Query.Request(text="mug"), timeout=60.0)
                assert not resp.success and "no model yet" in resp.message, resp.message
            finally:
                node.destroy_node()
    finally:
        code = stop_process(p, timeout=20.0)
    log = process_output(p)
    assert "No module named" not in log, log
    assert code == 0, f"exit code {code}:\n{log}"


@pytest.mark.parametrize("name", ["trainer_node", "lerf_node"])
def test_trainer_and_combined_node_start_as_installed(bare_bin, tmp_path, name):
    # A configuration error is the quickest way through start-up: the node imports its whole stack
    # (torch, the field, rclpy), reads its parameters and refuses the preset by name.
    env = installed_env(bare_bin, unique_domain_id())
    r = subprocess.run(
        as_installed(f"exec {shlex.quote(str(LIB / name))} --ros-args -p preset:=no_such_preset"),
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert "No module named" not in out, out
    assert r.returncode == 2 and "failed to start" in out and "no_such_preset" in out, out
