"""The query node as its own process, answering over DDS from a checkpoint trained in this test.

A tiny LERF is trained offline on a synthetic scene (its ground-truth semantics as the teacher) and
checkpointed; the query node loads the checkpoint; this process asks /lerf/query for the scene's
objects and checks the most relevant points and the best grasp lie on the named object, that a word
absent from the scene stays below the threshold, and that the RViz outputs are published (latched).
"""

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.mapping.session import Session  # noqa: E402
from lerf_ros.ros.convert import pointcloud2_to_numpy, pose_to_matrix  # noqa: E402
from lerf_ros.srv import Query  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

from ros_helpers import (  # noqa: E402,E501
    call,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,
)

STEPS = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of STEPS training steps (a few minutes on 2 idle cores)."""
    root = tmp_path_factory.mktemp("query_node")
    scene = make_scene(seed=1, n_objects=5, width=80, height=60, n_frames=24, nthreads=1)
    scene.save(root / "scene", preview=False)
    cfg = preset("tiny").override(
        {"teacher.kind": "ground_truth", "teacher.scene_dir": str(root / "scene"), "output_dir": str(root / "out")}
    )
    teacher = GroundTruthTeacher(scene)
    session = Session(cfg, teacher, online=False)
    for f in scene.frames:
        session.add(f)
    torch.set_num_threads(2)
    for _ in range(STEPS):
        session.step()
    session.save_checkpoint()  # <output_dir>/checkpoints/step-NNNNNNN.ckpt
    params = root / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    preset: tiny\n"
        f"    output_dir: '{root / 'out'}'\n    reload_period_s: 0.5\n"
        f"    teacher:\n      kind: ground_truth\n      scene_dir: '{root / 'scene'}'\n"
    )
    return scene, params


def latched(node, msg_type, topic, store):
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return node.create_subscription(msg_type, topic, lambda m: store.__setitem__(topic, m), qos)


@pytest.mark.timeout(1800)  # the fixture trains a model first
def test_query_node_answers_from_checkpoint_over_dds(trained):
    scene, params = trained
    domain = unique_domain_id()
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.query_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("query_client", context=ctx)
            client = node.create_client(Query, "/lerf/query")

            def ask(text, **kw):
                assert proc.poll() is None, process_output(proc)
                return call(node, client, Query.Request(text=text, **kw), timeout=120.0)

            assert spin_until(node, lambda: client.service_is_ready() or proc.poll() is not None, 90.0)
            assert proc.poll() is None, process_output(proc)
            # The checkpoint is loaded shortly after start; until then the answer says "no model yet".
            resp = ask(scene.objects[0].name)
            for _ in range(60):
                if "no model yet" not in resp.message:
                    break
                spin_until(node, lambda: False, 1.0)
                resp = ask(scene.objects[0].name)
            assert resp.model_step == STEPS, resp.message

            on_object, grasps_on_object, asked = 0, 0, 0
            text_with_grasp = None
            for obj in scene.objects:
                for text in (obj.name, obj.synonyms[0] if obj.synonyms else obj.name):
                    resp = ask(text)
                    asked += 1
                    if not resp.success:
                        continue
                    cloud = pointcloud2_to_numpy(resp.cloud)
                    assert {"x", "y", "z", "rgb", "relevancy"} <= set(cloud)
                    rel = np.asarray(cloud["relevancy"])
                    assert np.all(np.diff(rel) <= 1e-6), "cloud not sorted most relevant first"
                    assert rel.max() == pytest.approx(resp.max_relevancy, abs=1e-4)
                    top = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)[:10]
                    on_object += bool(np.mean(obj.contains(top, margin=0.02)) >= 0.5)
                    if resp.grasps:
                        text_with_grasp = text
                        T = pose_to_matrix(resp.grasps[0].pose)
                        grasps_on_object += bool(obj.contains(T[None, :3, 3], margin=0.02)[0])
                        assert len(resp.grasps) == len(resp.grasp_scores) == len(resp.grasp_widths)
                        assert all(0 < w <= 0.08 + 1e-6 for w in resp.grasp_widths)
                        assert list(resp.grasp_scores) == sorted(resp.grasp_scores, reverse=True)
                        assert T[2, 2] < 0.0 or abs(T[2, 2]) < 0.9, "approach must not come up through the table"
            assert on_object >= 0.8 * asked, f"{on_object}/{asked} queries had their top points on the object"
            assert grasps_on_object >= 0.6 * len(scene.objects), f"only {grasps_on_object} best grasps on the object"

            for absent in scene.absent_classes()[:3] + ["zebra crossing"]:
                resp = ask(absent)
                assert resp.max_relevancy < 0.55, (absent, resp.message)
                assert not resp.success and "best relevancy" in resp.message

            # The last successful answer is latched for a late RViz.
            assert text_with_grasp is not None
            assert ask(text_with_grasp).grasps
            got = {}
            late = rclpy.create_node("late_rviz", context=ctx)
            latched(late, PointCloud2, "/lerf/relevancy_cloud", got)
            latched(late, MarkerArray, "/lerf/grasp_markers", got)
            latched(late, PoseStamped, "/lerf/best_grasp", got)
            latched(late, PointCloud2, "/lerf/scene_cloud", got)
            assert spin_until(late, lambda: len(got) == 4, 30.0), sorted(got)
            assert got["/lerf/relevancy_cloud"].header.frame_id == "map"
            assert any(m.type == m.LINE_LIST for m in got["/lerf/grasp_markers"].markers)
            late.destroy_node()
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)
