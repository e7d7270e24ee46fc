"""Several cameras feeding one field.

- the parameter checks: camera names, the input QoS, per-camera sections in a params YAML;
- the synthetic second camera: rigidly offset from the first at every frame, same stamps;
- over DDS, against a real trainer process: a replay publishes three cameras (the scene's camera, a
  wrist camera beside it, and a covered camera whose images are black); the first two both give
  keyframes to the one field, the covered one's frames are all dropped with its name in the reasons
  and its own WARN in /diagnostics while the others stay OK; the input subscriptions use the QoS
  parameters.
"""

import numpy as np
import pytest

from lerf_ros.config import split_node_settings
from lerf_ros.data.synthetic import WRIST_OFFSET, make_scene, offset_camera_frames
from lerf_ros.geometry.poses import make_pose

rclpy = pytest.importorskip("rclpy")

from lerf_ros.ros.camera_input import check_camera_names, input_qos  # noqa: E402

W, H = 64, 48


def test_camera_names_and_qos_parameters_are_checked():
    assert check_camera_names(["head", "wrist_2"], ["model"]) == ["head", "wrist_2"]
    for names, words in (
        ([], "at least one"),
        (["head", "head"], "unique"),
        (["2cam"], "letter"),
        (["wrist/cam"], "letter"),
        (["model"], "already a parameter"),
    ):
        with pytest.raises(ValueError, match=words):
            check_camera_names(names, ["model", "world_frame"])
    from rclpy.qos import ReliabilityPolicy

    assert input_qos("best_effort", 5).reliability == ReliabilityPolicy.BEST_EFFORT
    q = input_qos("Reliable", 7)
    assert q.reliability == ReliabilityPolicy.RELIABLE and q.depth == 7
    with pytest.raises(ValueError, match="input_qos_reliability"):
        input_qos("sometimes", 5)
    with pytest.raises(ValueError, match="input_qos_depth"):
        input_qos("reliable", 0)


def test_camera_sections_of_a_params_yaml_are_node_settings():
    settings = {
        "cameras": ["head", "wrist"],
        "wrist": {"image_topic": "/arm/image", "body_to_camera": [0, 0, 0, 0, 0, 0, 1]},
        "model": {"hidden_dim": 32},
    }
    config, node = split_node_settings(settings)
    assert config == {"model.hidden_dim": 32}
    assert node["wrist.image_topic"] == "/arm/image" and node["cameras"] == ["head", "wrist"]


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=W, height=H, n_frames=16, nthreads=1)


def test_second_camera_is_rigidly_offset_with_the_same_stamps(scene):
    wrist = offset_camera_frames(scene, frame_id="wrist_optical")
    T = make_pose(np.asarray(WRIST_OFFSET[:3]), np.asarray(WRIST_OFFSET[3:]))
    assert len(wrist) == len(scene.frames)
    for head, w in zip(scene.frames, wrist):
        np.testing.assert_allclose(np.linalg.inv(head.c2w) @ w.c2w, T, atol=1e-9)
        assert w.stamp == head.stamp and w.frame_id == "wrist_optical" and w.rgb.shape == head.rgb.shape
        w.validate()
    # Another viewpoint: other pixels, the same scene (similar brightness, objects in view).
    assert np.mean([np.abs(w.rgb.astype(int) - h.rgb.astype(int)).mean() for w, h in zip(wrist, scene.frames)]) > 5
    assert sum((w.instance > 0).any() for w in wrist) >= len(wrist) // 2
    with pytest.raises(ValueError, match="7 numbers"):
        offset_camera_frames(scene, offset=(0, 0, 0))


def test_three_cameras_feed_one_trainer_and_a_covered_one_harms_no_other(scene, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import ReliabilityPolicy
    from test_nodes import StatusWatcher, node_argv, write_params

    from lerf_ros.ros.replay_node import ReplayNode

    from ros_helpers import (
        process_output,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    scene_dir = tmp_path / "scene"
    scene.save(scene_dir, preview=False)
    wrist = offset_camera_frames(scene, frame_id="wrist_camera_optical_frame")
    covered = [f.__class__(**{**f.__dict__, "rgb": np.zeros_like(f.rgb)}) for f in wrist]  # a lens cap on
    params = write_params(
        tmp_path / "params.yaml",
        scene_dir,
        tmp_path / "out",
        cameras=["camera", "wrist", "covered"],
        covered={
            "image_topic": "cam3/image",
            "camera_info_topic": "cam3/camera_info",
            "depth_topic": "cam3/depth",
            "pose_topic": "cam3/pose",
        },
        input_qos_reliability="reliable",
        input_qos_depth=7,
        resume=False,
    )
    domain = unique_domain_id()
    proc = start_process(node_argv(params, "lerf_ros.ros.trainer_node"), env=ros_env(domain))
    diagnostics = {}
    try:
        with ros_context(domain) as ctx:
            listener = rclpy.create_node("cameras_listener", context=ctx)
            status = StatusWatcher(listener)
            listener.create_subscription(
                DiagnosticArray, "/diagnostics", lambda m: diagnostics.update({s.name: s for s in m.status}), 10
            )
            replay = ReplayNode(
                scene.frames,
                rate=4.0,
                loop=True,
                wait_for_subscribers=1,
                wait_timeout=120.0,
                extra_cameras=[("wrist", wrist, "wrist_camera_optical_frame"), ("cam3", covered, "cam3_optical")],
                log_every=60.0,
                context=ctx,
            )
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(listener)
            executor.add_node(replay)

            def done():
                assert proc.poll() is None, process_output(proc)
                s = status.last
                return (
                    s is not None
                    and len(s.camera_keyframes) == 3
                    and min(s.camera_keyframes[:2]) >= 2
                    and s.camera_frames_dropped[2] >= 6
                    and "lerf_trainer: camera covered" in diagnostics
                    and diagnostics["lerf_trainer: camera covered"].level == b"\x01"
                )

            ok = spin_until(listener, done, 180.0, executor=executor)
            s = status.last
            assert ok, (s, {k: v.message for k, v in diagnostics.items()}, process_output(proc)[-4000:])
            assert list(s.camera_names) == ["camera", "wrist", "covered"]
            received, dropped, kept = (
                list(a) for a in (s.camera_frames_received, s.camera_frames_dropped, s.camera_keyframes)
            )
            assert kept[2] == 0 and dropped[2] >= 6, (received, dropped, kept)
            assert s.frames_kept >= kept[0] + kept[1] - 2, (s.frames_kept, kept)  # one field holds both cameras'
            # The covered camera's drops carry its name; the good cameras lose (almost) nothing.
            reasons = dict(zip(s.drop_reasons, s.drop_counts))
            dark = {r: n for r, n in reasons.items() if "too dark" in r}
            assert dark and all(r.startswith("camera 'covered'") for r in dark), reasons
            for i in (0, 1):
                assert dropped[i] <= 0.2 * received[i] + 1, (received, dropped, reasons)
            wrist_check = diagnostics["lerf_trainer: camera wrist"]
            assert wrist_check.level == b"\x00", wrist_check
            values = {kv.key: kv.value for kv in wrist_check.values}
            assert values["image topic"] == "/wrist/image" and int(values["keyframes taken"]) >= 2, values
            assert "too dark" in diagnostics["lerf_trainer: camera covered"].message
            # The input QoS parameters reach the subscriptions (discovery carries the reliability, not
            # the history depth; the default best-effort would show here as BEST_EFFORT).
            subs = [e for e in listener.get_subscriptions_info_by_topic("/cam3/image") if e.node_name == "lerf_trainer"]
            assert subs and subs[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE, subs
            executor.shutdown(timeout_sec=0)
            replay.destroy_node()
            listener.destroy_node()
    finally:
        rc = stop_process(proc)
    assert rc == 0, process_output(proc)


def test_replay_command_publishes_a_second_camera_over_dds(tmp_path, capsys):
    import signal

    from sensor_msgs.msg import Image

    from lerf_ros.cli import main
    from lerf_ros.data.transforms_json import write_transforms
    from lerf_ros.ros.convert import stamp_to_sec

    from ros_helpers import (
        lerf_ros_argv,
        process_output,
        ros_context,
        ros_env,
        spin_until,
        start_process,
        stop_process,
        unique_domain_id,
    )

    # Only a synthetic source can render the second camera: anything else is refused, saying why.
    write_transforms(tmp_path / "tf", make_scene(seed=5, width=16, height=12, n_frames=2, nthreads=1).frames)
    assert main(["replay", str(tmp_path / "tf"), "--cameras", "2"]) == 2
    assert "synthetic" in capsys.readouterr().out

    domain = unique_domain_id()
    got = {"image": [], "wrist/image": []}
    with ros_context(domain) as ctx:
        node = rclpy.create_node("second_camera_listener", context=ctx)
        for topic in got:
            node.create_subscription(Image, topic, lambda m, t=topic: got[t].append(m), 20)
        proc = start_process(
            lerf_ros_argv(
                "replay",
                "synthetic:seed=5,width=32,height=24,frames=4",
                "--cameras",
                "2",
                "--rate",
                "10",
                "--loop",
                "--wait-for-subscribers",
                "1",
            ),
            env=ros_env(domain),
        )
        try:
            ok = spin_until(node, lambda: min(map(len, got.values())) >= 6 or proc.poll() is not None, 60.0)
            assert ok and proc.poll() is None, process_output(proc)
        finally:
            code = stop_process(proc, timeout=15.0, sig=signal.SIGINT)
            node.destroy_node()
    assert code == 0, process_output(proc)
    head = {stamp_to_sec(m.header.stamp): m for m in got["image"]}
    wrist = {stamp_to_sec(m.header.stamp): m for m in got["wrist/image"]}
    common = sorted(set(head) & set(wrist))
    assert len(common) >= 4, (sorted(head), sorted(wrist))  # the two cameras share their stamps
    for t in common:
        assert head[t].header.frame_id == "camera_optical_frame"
        assert wrist[t].header.frame_id == "wrist_camera_optical_frame"
        assert (wrist[t].width, wrist[t].height) == (32, 24) and bytes(wrist[t].data) != bytes(head[t].data)
