"""Export of the mapped scene as files other tools open (``lerf_ros.query.export``):

- from an exact field (the synthetic scene's ground truth): every file is read back by open3d, the
  surface and mesh lie on the true geometry, colours are in range, the cameras are the keyframes';
- ``lerf-ros export --checkpoint`` on a checkpoint trained here for a few steps;
- ``/lerf/export`` on the trainer node over DDS while a replay streams the scene, with a relevancy
  cloud latched on ``/lerf/relevancy_cloud`` (as the query node publishes its last answer).
"""

import json
import os
import subprocess
import sys

import numpy as np
import open3d as o3d
import pytest
import torch

from lerf_ros.config import preset
from lerf_ros.data.synthetic import make_scene
from lerf_ros.field.snapshot import CameraView
from lerf_ros.query.export import ExportError, export_map
from lerf_ros.query.surface import extract_surface
from lerf_ros.teachers.ground_truth import GroundTruthTeacher

from analytic_field import AnalyticSnapshot
from ros_helpers import REPO_ROOT

W, H = 64, 48


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=2, width=96, height=72, n_frames=12, nthreads=1)


@pytest.fixture(scope="module")
def snap(scene):
    return AnalyticSnapshot(scene, GroundTruthTeacher(scene).encode_text, step=7)


def check_files(folder, n_cameras):
    """Read every exported file back with open3d / json; returns (surface cloud, mesh)."""
    pcd = o3d.io.read_point_cloud(os.path.join(folder, "surface.ply"))
    assert len(pcd.points) > 0 and pcd.has_colors() and pcd.has_normals()
    colors = np.asarray(pcd.colors)
    assert colors.min() >= 0.0 and colors.max() <= 1.0 and np.ptp(colors) > 0.05
    np.testing.assert_allclose(np.linalg.norm(np.asarray(pcd.normals), axis=1), 1.0, atol=1e-4)
    mesh = o3d.io.read_triangle_mesh(os.path.join(folder, "mesh.ply"))
    assert len(mesh.triangles) > 0 and mesh.has_vertex_colors()
    vc = np.asarray(mesh.vertex_colors)
    assert vc.min() >= 0.0 and vc.max() <= 1.0
    with open(os.path.join(folder, "cameras.json")) as f:
        cams = json.load(f)
    assert len(cams["frames"]) == n_cameras
    lines = o3d.io.read_line_set(os.path.join(folder, "cameras.ply"))
    assert len(lines.lines) == 8 * n_cameras
    return pcd, mesh, cams


def test_export_of_an_exact_field_lies_on_its_geometry(snap, tmp_path):
    cfg = preset("tiny").query
    surface = extract_surface(snap, cfg)
    rng = np.random.default_rng(0)
    rel_xyz = surface.xyz[:200]
    rel = rng.random(200).astype(np.float32)
    result = export_map(snap, cfg, str(tmp_path), relevancy={"xyz": rel_xyz, "relevancy": rel}, surface=surface)
    assert result.points == len(surface) > 1000 and result.triangles > 1000 and result.cameras == len(snap.cameras)
    pcd, mesh, cams = check_files(tmp_path, len(snap.cameras))
    np.testing.assert_allclose(np.asarray(pcd.points), surface.xyz, atol=1e-6)
    np.testing.assert_array_equal(np.round(np.asarray(pcd.colors) * 255).astype(np.uint8), surface.rgb)

    # The mesh is the surface: its vertices lie within a couple of voxels of the rendered surface
    # points (nothing invented far from the data), and most points have the mesh right by them.
    vertices = o3d.geometry.PointCloud(mesh.vertices)
    to_points = np.asarray(vertices.compute_point_cloud_distance(pcd))
    to_mesh = np.asarray(pcd.compute_point_cloud_distance(vertices))
    cell = float(np.ptp(surface.xyz, axis=0).max()) / 2**8
    print(f"cell {cell:.4f} m; mesh->points p50/p95/max", np.percentile(to_points, [50, 95, 100]))
    print("points->mesh p50/p95", np.percentile(to_mesh, [50, 95]))
    assert np.median(to_points) < 2 * cell and np.percentile(to_points, 95) < 4 * cell
    assert to_points.max() < 0.15, (to_points.max(), cell)
    assert np.median(to_mesh) < 2 * cell, (np.median(to_mesh), cell)
    for i, frame in enumerate(cams["frames"]):
        np.testing.assert_allclose(frame["camera_to_world_opencv"], snap.cameras[i].c2w, atol=1e-9)
        np.testing.assert_allclose(frame["K"], snap.cameras[i].K, atol=1e-9)
        gl = np.asarray(frame["transform_matrix"])
        np.testing.assert_allclose(gl[:3, 1], -np.asarray(snap.cameras[i].c2w)[:3, 1], atol=1e-9)
    rc = o3d.t.io.read_point_cloud(str(tmp_path / "relevancy.ply"))
    np.testing.assert_allclose(rc.point["relevancy"].numpy().reshape(-1), rel, atol=1e-6)
    colors = rc.point["colors"].numpy()
    assert colors.min() >= 0 and colors.max() <= 1
    assert np.argmax(colors[:, 0]) == np.argmax(rel)  # the most relevant point is the brightest

    # Exported again without an answer: the old relevancy file does not linger beside the new map.
    export_map(snap, cfg, str(tmp_path), surface=surface, mesh=False)
    assert not (tmp_path / "relevancy.ply").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_a_map_without_cameras_or_surface_is_refused(snap, tmp_path):
    class NoCameras:
        step, cameras = 3, []

    with pytest.raises(ExportError, match="no keyframe cameras"):
        export_map(NoCameras(), preset("tiny").query, str(tmp_path / "a"))
    far = AnalyticSnapshot.__new__(AnalyticSnapshot)
    far.__dict__.update(snap.__dict__)
    # cameras looking away from the scene see no surface
    far.cameras = [
        CameraView(K=c.K, c2w=np.asarray(c.c2w) @ np.diag([1.0, -1.0, -1.0, 1.0]), height=c.height, width=c.width)
        for c in snap.cameras[:3]
    ]
    with pytest.raises(ExportError, match="no surface"):
        export_map(far, preset("tiny").query, str(tmp_path / "b"))
    assert not (tmp_path / "b" / "surface.ply").exists()


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_scene")
    scene = make_scene(seed=5, width=W, height=H, n_frames=12, nthreads=1)
    scene.save(root / "scene", preview=False)
    return scene, root / "scene"


def test_export_command_writes_a_checkpoints_map(scene_dir, tmp_path):
    from lerf_ros.mapping.session import Session

    scene, folder = scene_dir
    cfg = preset("tiny").override(
        {"teacher.kind": "ground_truth", "teacher.scene_dir": str(folder), "output_dir": str(tmp_path / "run")}
    )
    session = Session(cfg, GroundTruthTeacher(scene), online=False)
    for f in scene.frames:
        session.add(f)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(8):  # depth supervision gives a surface within a few steps
            session.step()
    finally:
        torch.set_num_threads(threads)
    session.save_checkpoint()
    out = tmp_path / "export"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "lerf_ros.cli", "export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 8" in r.stdout and "surface points" in r.stdout
    check_files(out, len(scene.frames))
    bad = subprocess.run(
        [sys.executable, "-m", "lerf_ros.cli", "export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "cannot load the checkpoint" in bad.stderr


def test_export_service_over_dds_writes_the_live_map_and_the_last_answer(scene_dir, tmp_path):
    rclpy = pytest.importorskip("rclpy")
    from sensor_msgs.msg import PointCloud2  # noqa: F401
    from std_srvs.srv import Trigger

    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.common import LATCHED_QOS
    from lerf_ros.ros.convert import points_to_pointcloud2

    from ros_helpers import (
        call,
        lerf_ros_argv,
        process_output,
        python_argv,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
        wait_for_service,
        write_node_params,
    )

    scene, folder = scene_dir
    export_dir = tmp_path / "exported"
    params = write_node_params(
        tmp_path / "params.yaml", folder, tmp_path / "out", trainer={"export_dir": str(export_dir)}
    )
    domain = unique_domain_id()
    env = ros_env(domain)
    trainer = start_process(
        python_argv("-m", "lerf_ros.ros.trainer_node", "--ros-args", "--params-file", str(params)), env=env
    )
    replay = None
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("export_client", context=ctx)
            last = {}
            node.create_subscription(TrainingStatus, "/lerf/status", lambda m: last.__setitem__("s", m), 10)
            client = node.create_client(Trigger, "/lerf/export")
            assert wait_for_service(client, 180.0), process_output(trainer)
            early = call(node, client, Trigger.Request(), timeout=120.0)
            assert not early.success and "no model yet" in early.message, early.message
            # The last answer, as the query node latches it
            rel_pub = node.create_publisher(PointCloud2, "/lerf/relevancy_cloud", LATCHED_QOS)
            xyz = np.asarray(scene.frames[0].c2w)[:3, 3] + np.random.default_rng(1).normal(0, 0.1, (50, 3))
            rel = np.linspace(0.5, 1.0, 50, dtype=np.float32)
            rel_pub.publish(points_to_pointcloud2(xyz, fields={"relevancy": rel}, frame_id="map"))
            replay = start_process(lerf_ros_argv("replay", str(folder), "--rate", "8", "--loop"), env=env)
            trained = spin_until(node, lambda: "s" in last and last["s"].step >= 2, 600.0)
            assert trained, process_output(trainer) + process_output(replay)
            resp = call(node, client, Trigger.Request(), timeout=300.0)
            assert resp.success, resp.message + process_output(trainer)
            assert "relevancy points" in resp.message and str(export_dir) in resp.message
            node.destroy_node()
    finally:
        if replay is not None:
            stop_process(replay, timeout=20.0)
        code = stop_process(trainer, timeout=30.0)
    assert code == 0, process_output(trainer)
    _, _, cams = check_files(export_dir, len(cams_of(export_dir)))
    assert len(cams["frames"]) >= 2
    rc = o3d.t.io.read_point_cloud(str(export_dir / "relevancy.ply"))
    np.testing.assert_allclose(rc.point["relevancy"].numpy().reshape(-1), rel, atol=1e-6)
    np.testing.assert_allclose(rc.point["positions"].numpy(), xyz.astype(np.float32), atol=1e-5)


def cams_of(folder):
    with open(os.path.join(folder, "cameras.json")) as f:
        return json.load(f)["frames"]
