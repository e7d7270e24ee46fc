"""The TF path: one shared TF buffer per process, fed on its own thread; answers in moving frames.

Without tf2 (it is not on PyPI): the reasons and the client's frame/stamp helpers, and the command
line's ``--frame-id``. Where tf2 is importable (``pytest.importorskip``):

- ``acquire_tf_feed`` gives the nodes of one process one feed, whose /tf callbacks run on its own
  thread: transforms arrive while no executor spins the nodes; before any /tf the lookup says so
  plainly; the last user's release closes it;
- ``FrameResolver`` gives a moving frame's transform with the stamp of the transform used, and no
  stamp for a frame joined by static transforms only;
- a real process with both nodes (trainer with ``pose_source: tf``): images before any /tf are
  dropped with the plain reason, then, with a mobile manipulator's TF tree (an arm of 20 transforms
  at 50 Hz beside it), frames are kept and training runs; the two nodes share one listener process,
  an answer in ``base_link`` is stamped with the time of the transform used (also through
  ``lerf-ros query --frame-id``), and a moved ``map -> odom`` corrects the keyframes (TF re-lookup).
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from lerf_ros.ros.tf import NO_TF_YET, FrameAnswer, TfCounters, stamp_or  # noqa: E402
from lerf_ros.ros.tf_link import CANCELLED, ListenerLink  # noqa: E402

from ros_helpers import (  # noqa: E402
    REPO_ROOT,
    call,
    process_output,
    python_argv,
    ros_context,
    ros_env,
    spin_until,
    start_process,
    stop_process,
    unique_domain_id,
    write_node_params,
)


# ---------------------------------------------------------------------------------------------- no tf2 needed
def test_no_tf_reason_is_plain_and_counters_record_the_first_message():
    reason = NO_TF_YET.format(topic="/tf")
    assert reason == "no TF received yet on /tf (is the robot's TF tree published?)"
    c = TfCounters()
    assert not c.received
    c.add(3, static=True)
    assert not c.received and c.static_transforms == 3  # static mounts alone are not a TF tree
    c.add(20, static=False)
    assert c.received and c.messages == 1 and c.transforms == 20


def test_answer_stamp_is_the_transforms_or_now():
    from builtin_interfaces.msg import Time as TimeMsg

    t = TimeMsg(sec=12, nanosec=5)
    assert stamp_or(FrameAnswer(np.eye(4), t), lambda: "now") is t
    assert stamp_or(FrameAnswer(None, None), lambda: "now") == "now"


def test_answer_frame_reads_the_response_header():
    from geometry_msgs.msg import PoseStamped

    from lerf_ros.ros.client import answer_frame
    from lerf_ros.srv import Query

    resp = Query.Response()
    assert answer_frame(resp) == ("", 0.0)
    resp.grasps.append(PoseStamped())
    resp.grasps[0].header.frame_id = "base_link"
    resp.grasps[0].header.stamp.sec, resp.grasps[0].header.stamp.nanosec = 7, 500_000_000
    assert answer_frame(resp) == ("base_link", 7.5)
    resp.cloud.header.frame_id = "tool0"
    assert answer_frame(resp)[0] == "tool0"


def test_cli_frame_id_needs_the_service(tmp_path):
    out = subprocess.run(
        python_argv("-m", "lerf_ros.cli", "query", "mug", "--checkpoint", str(tmp_path), "--frame-id", "base_link"),
        cwd=str(REPO_ROOT),
        env=ros_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--frame-id needs --service" in out.stderr


#: A stand-in for the listener process (the same protocol, no tf2): answers each call (and ping) with
#: its own pid, never answers "stall"; after "sick" it answers pings saying it is stuck; exits at
#: start while the file named by its second argument exists.
FAKE_LISTENER = """
import os, sys, time
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
if os.path.exists(sys.argv[2]):
    os._exit(7)
conn.send(("ready", os.getpid()))
sick = False
while True:
    try:
        rid, kind, payload = conn.recv()
    except (EOFError, OSError):
        break
    if kind == "sick":
        sick = True
    if kind == "ping" and sick:
        conn.send((0, "its ROS thread has not come back for 11 s", (1, 2, 3)))
    elif kind == "garbage":
        conn.send("not an answer")
    elif kind == "deaf":
        time.sleep(120)  # stops reading
    elif kind != "stall":
        conn.send((rid, (kind, payload, os.getpid()), (1, 2, 3)))
"""

#: The stand-in, writing its pid to the file named by its third argument, then slow to start (60 s)
#: while the file named by its fourth argument exists.
SLOW_LISTENER = (
    """
import os, sys, time
with open(sys.argv[3], "a") as f:
    f.write(f"{os.getpid()}\\n")
if os.path.exists(sys.argv[4]):
    time.sleep(60)
"""
    + FAKE_LISTENER
)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_listener_that_dies_is_restarted_with_backoff_and_lookups_say_so_meanwhile(tmp_path):
    """``ListenerLink`` (what ``TfFeed`` talks to its listener process through) over a stand-in child:
    a child that dies fails the calls waiting for it and is logged once; calls meanwhile fail at once
    with "TF listener restarting (...)"; it is started again (with back-off while starts fail: one log
    line for all of them) and answers; a waiting call is given up when its cancel event is set; after
    ``close`` nothing is restarted."""
    import signal
    import threading

    broken = tmp_path / "broken"
    logs = []
    extras = []
    link = ListenerLink(
        lambda fd: python_argv("-c", FAKE_LISTENER, str(fd), str(broken)),
        log=logs.append,
        on_extra=extras.append,
        backoff_s=(0.2, 1.0),
    )
    try:
        answer, why = link.call("lookup", "a", 30.0)
        first = link.process.pid
        assert why == "" and answer == ("lookup", "a", first) and extras[-1] == (1, 2, 3)

        # A call waiting when the child dies fails at once (not after its 30 s), with the reason.
        broken.touch()  # the next starts fail: the back-off and its single log line
        waiting = []
        caller = threading.Thread(target=lambda: waiting.append(link.call("stall", None, 30.0)))
        caller.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(first, signal.SIGKILL)
        caller.join(10.0)
        assert waiting and waiting[0][0] is None and time.monotonic() - t0 < 5.0
        assert waiting[0][1].startswith("TF listener restarting (the TF listener process exited (code -9))"), waiting
        assert link.restarts == 0 and link.alive

        # Meanwhile calls fail at once, saying why; the failed starts are logged once.
        t0 = time.monotonic()
        answer, why = link.call("lookup", "b", 30.0)
        assert answer is None and why.startswith("TF listener restarting") and time.monotonic() - t0 < 1.0
        assert _wait(lambda: any("could not restart" in line for line in logs), 20.0), logs
        time.sleep(1.5)  # a few more failed starts (every 1 s at most)
        assert sum("could not restart" in line for line in logs) == 1, logs
        assert sum("exited" in line and "restarting it" in line for line in logs) == 1, logs

        # Starts work again: a new child answers.
        broken.unlink()
        assert _wait(lambda: link.call("lookup", "c", 5.0)[0] is not None, 20.0), (link.down_reason, logs)
        answer, why = link.call("lookup", "c", 5.0)
        assert answer[2] != first and link.process.pid == answer[2] and link.restarts == 1 and link.down_reason == ""
        assert sum("restarted" in line for line in logs) == 1, logs

        # A waiting call is given up when its cancel event is set.
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        t0 = time.monotonic()
        assert link.call("stall", None, 30.0, cancel) == (None, CANCELLED)
        assert time.monotonic() - t0 < 3.0
        assert link.call("lookup", "d", 5.0)[0] is not None  # the link still answers
    finally:
        link.close()
    second = link.process
    assert second.wait(10.0) == 0  # ended with its socket
    assert not link.alive and link.call("lookup", "e", 1.0) == (None, "the TF listener is closed")
    time.sleep(0.5)
    assert link.restarts == 1 and link.process is second  # nothing restarted after close


def test_a_listener_that_stops_answering_is_ended_and_restarted(tmp_path):
    """A child that runs but stops answering (SIGSTOP: as one stuck in a call that never returns) is
    found by its pings: within the liveness timeout (5 s here) the calls waiting for it fail with "TF
    listener restarting (...)", it is killed, logged once, and a new child answers (a restart, counted
    as one after a death). A quiet child that answers its pings is left alone; one that says it is
    stuck is ended too."""
    import signal
    import threading

    logs = []
    link = ListenerLink(
        lambda fd: python_argv("-c", FAKE_LISTENER, str(fd), str(tmp_path / "broken")),
        log=logs.append,
        backoff_s=(0.2, 1.0),
        liveness_s=5.0,
    )
    try:
        first = link.process
        time.sleep(7.0)  # idle, past the liveness timeout: the pings keep it
        assert link.restarts == 0 and link.process is first and link.down_reason == "", logs
        answer, why = link.call("lookup", "a", 30.0)
        assert why == "" and answer[2] == first.pid

        waiting = []
        caller = threading.Thread(target=lambda: waiting.append(link.call("stall", None, 60.0)))
        caller.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        first.send_signal(signal.SIGSTOP)
        caller.join(30.0)
        took = time.monotonic() - t0
        assert waiting and waiting[0][0] is None, waiting
        assert waiting[0][1].startswith("TF listener restarting (the TF listener process did not answer for"), waiting
        assert took < 20.0, took
        assert first.wait(10.0) == -signal.SIGKILL  # killed (a stopped process takes no other signal) and reaped
        assert _wait(lambda: link.restarts == 1 and link.down_reason == "", 30.0), (link.down_reason, logs)
        answer, why = link.call("lookup", "b", 30.0)
        assert why == "" and answer[2] == link.process.pid != first.pid
        assert sum("did not answer for" in line for line in logs) == 1, logs
        assert any(f"ended it (pid {first.pid})" in line for line in logs), logs

        # A child that says it is stuck (a part of it: the listener's ROS thread) is ended too.
        second = link.process
        link.call("sick", None, 30.0)
        assert _wait(lambda: link.restarts == 2 and link.down_reason == "", 30.0), (link.down_reason, logs)
        assert second.wait(10.0) is not None and link.process is not second
        assert any("is stuck (its ROS thread has not come back for 11 s)" in line for line in logs), logs
        assert link.call("lookup", "c", 30.0)[0] is not None
    finally:
        link.close()
    assert link.process.wait(10.0) == 0


#: A stand-in with one worker (as the listener's pool, smaller): "wait" waits up to 60 s for its
#: "cancel" before answering, "lookup" is answered by the same worker; its table of calls in flight
#: is carried in each answer's extra.
ONE_WORKER_LISTENER = """
import os, queue, sys, threading
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
conn.send(("ready", os.getpid()))
calls, in_flight, lock = queue.Queue(), {}, threading.Lock()
def work():
    while True:
        rid, kind, payload = calls.get()
        if kind == "wait":
            in_flight[rid].wait(60.0)
        with lock:
            in_flight.pop(rid)
            conn.send((rid, (kind, payload), len(in_flight)))
threading.Thread(target=work, daemon=True).start()
while True:
    try:
        rid, kind, payload = conn.recv()
    except (EOFError, OSError):
        break
    with lock:
        if kind == "ping":
            conn.send((0, "", len(in_flight)))
        elif kind == "cancel":
            if payload in in_flight:
                in_flight[payload].set()
        else:
            in_flight[rid] = threading.Event()
            calls.put((rid, kind, payload))
"""


def test_cancelled_calls_are_given_up_by_the_child_too():
    """A call given up by its cancel event is told to the child ("cancel"), whose worker stops
    waiting for it: after more cancelled calls than the child has workers, the next call is answered
    at once (not after the 60 s the cancelled ones would have waited); no table keeps an entry."""
    import threading

    in_flight = []
    link = ListenerLink(lambda fd: python_argv("-c", ONE_WORKER_LISTENER, str(fd)), on_extra=in_flight.append)
    try:
        for i in range(2):  # one more than the child's one worker
            cancel = threading.Event()
            threading.Timer(0.2, cancel.set).start()
            t0 = time.monotonic()
            assert link.call("wait", i, 60.0, cancel) == (None, CANCELLED)
            assert time.monotonic() - t0 < 5.0
        t0 = time.monotonic()
        answer, why = link.call("lookup", "a", 60.0)
        assert why == "" and answer == ("lookup", "a") and time.monotonic() - t0 < 10.0, why
        assert link.calls_waiting == 0
        assert _wait(lambda: in_flight[-1] == 0, 10.0), in_flight  # the child's table is empty again (pings)
        assert link.restarts == 0
    finally:
        link.close()


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_close_during_a_restart_ends_the_child_being_started(tmp_path):
    """``close`` while a child is being started again (slow to start: it would send "ready" after
    60 s) ends that child too, and returns within a few seconds."""
    pids, slow = tmp_path / "pids", tmp_path / "slow"
    link = ListenerLink(
        lambda fd: python_argv("-c", SLOW_LISTENER, str(fd), str(tmp_path / "broken"), str(pids), str(slow)),
        backoff_s=(0.1, 0.5),
    )
    try:
        first = link.process.pid
        slow.touch()
        os.kill(first, 9)
        assert _wait(lambda: len(pids.read_text().split()) >= 2, 30.0), pids.read_text()
        starting = int(pids.read_text().split()[1])
        assert _running(starting) and link.restarts == 0
    finally:
        t0 = time.monotonic()
        link.close(timeout_s=1.0)
        took = time.monotonic() - t0
    assert took < 10.0, took
    assert _wait(lambda: not _running(starting), 5.0), "the child being started outlived close"
    time.sleep(0.5)
    assert link.restarts == 0 and len(pids.read_text().split()) == 2  # nothing started after close


def test_a_bad_answer_is_logged_once_and_the_link_keeps_reading(tmp_path):
    """An answer that is not ``(id, result, extra)`` is logged once; the reader goes on, later calls
    are answered."""
    logs = []
    link = ListenerLink(lambda fd: python_argv("-c", FAKE_LISTENER, str(fd), str(tmp_path / "broken")), log=logs.append)
    try:
        for _ in range(2):
            assert link.call("garbage", None, 0.5)[0] is None
            answer, why = link.call("lookup", "a", 30.0)
            assert why == "" and answer[:2] == ("lookup", "a"), (why, logs)
        assert sum("could not be taken" in line for line in logs) == 1, logs
        assert link.restarts == 0
    finally:
        link.close()


def test_a_child_that_stops_reading_blocks_neither_other_calls_nor_close(tmp_path):
    """A call whose send blocks (the child stopped reading; the socket's buffer is full) holds up
    neither another call (it fails within its wait) nor ``close`` (which ends the blocked send)."""
    import threading

    link = ListenerLink(lambda fd: python_argv("-c", FAKE_LISTENER, str(fd), str(tmp_path / "broken")))
    blocked = []
    try:
        assert link.call("deaf", None, 0.3)[0] is None  # the child now sleeps, reading nothing
        sender = threading.Thread(target=lambda: blocked.append(link.call("lookup", b"x" * (32 << 20), 1.0)))
        sender.start()
        time.sleep(1.0)
        assert sender.is_alive()  # blocked in its send
        t0 = time.monotonic()
        answer, why = link.call("lookup", "a", 1.0)
        assert answer is None and "did not" in why and time.monotonic() - t0 < 5.0, why
    finally:
        t0 = time.monotonic()
        link.close(timeout_s=1.0)
        took = time.monotonic() - t0
    assert took < 10.0, took
    sender.join(10.0)
    assert not sender.is_alive() and blocked and blocked[0][0] is None, blocked


# ---------------------------------------------------------------------------------------------- with tf2
def _tf2():
    pytest.importorskip("tf2_ros")
    return pytest.importorskip("tf2_msgs.msg")


def _transform(T, parent, child, stamp):
    from lerf_ros.ros.convert import matrix_to_transform_stamped

    return matrix_to_transform_stamped(T, parent, child, stamp)


def _yaw(deg, x=0.0, y=0.0, z=0.0):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = (x, y, z)
    return T


def test_one_feed_per_process_kept_by_a_listener_process():
    tf2_msgs = _tf2()
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from rclpy.time import Time

    from lerf_ros.ros.tf import FrameResolver, acquire_tf_feed

    with ros_context() as ctx:
        a = rclpy.create_node("tf_user_a", context=ctx)
        b = rclpy.create_node("tf_user_b", context=ctx)
        pub_node = rclpy.create_node("tf_pub", context=ctx)
        feed = acquire_tf_feed(a, cache_s=30.0)
        assert acquire_tf_feed(b) is feed and feed.cache_s == 30.0
        resolver = FrameResolver(b, "map")
        assert resolver.feed is feed

        # Before any /tf: the plain reason, for the trainer's drops and for queries.
        T, stamp, reason = feed.lookup("map", "camera", Time(seconds=5).to_msg(), 0.0)
        assert T is None and stamp is None and reason == NO_TF_YET.format(topic="/tf")
        assert "no TF received yet" in resolver.resolve("base_link").error

        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        static_pub = pub_node.create_publisher(
            tf2_msgs.TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        )
        map_to_base = _yaw(30.0, 1.0, 2.0)
        t1, t2 = Time(seconds=100).to_msg(), Time(seconds=101).to_msg()
        static_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(_yaw(0.0, 0, 0, 0.5), "map", "mast", t1)]))
        # Nobody spins a, b or the publisher: the feed's own thread receives.
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and feed.lookup("map", "base_link", t2, 0.0)[0] is None:
            tf_pub.publish(
                tf2_msgs.TFMessage(
                    transforms=[
                        _transform(map_to_base, "map", "base_link", t1),
                        _transform(map_to_base, "map", "base_link", t2),
                    ]
                )
            )
            time.sleep(0.1)
        T, stamp, reason = feed.lookup("map", "base_link", t2, 0.0)
        assert T is not None, reason
        np.testing.assert_allclose(T, map_to_base, atol=1e-6)
        assert feed.counters.received and feed.no_tf_reason() == ""
        # The buffer lives in a listener process of its own: this process only asked.
        assert feed.process.poll() is None and feed.process.pid != os.getpid()

        # A moving frame: the world -> frame transform at the latest time, stamped with that time.
        answer = resolver.resolve("base_link")
        assert answer.error == "" and (answer.stamp.sec, answer.stamp.nanosec) == (101, 0)
        np.testing.assert_allclose(answer.world_to_frame, np.linalg.inv(map_to_base), atol=1e-6)
        # A frame joined by static transforms only does not move: no stamp (the answer is stamped now).
        assert spin_until(pub_node, lambda: resolver.resolve("mast").error == "", 20.0)
        assert resolver.resolve("mast").stamp is None
        assert resolver.resolve("map") == FrameAnswer(None, None)
        assert "unknown frame 'nowhere'" in resolver.resolve("nowhere").error

        # A clock jump clears /tf's transforms; /tf_static's stay.
        assert feed.clear()
        assert feed.lookup("map", "base_link", t2, 0.0)[0] is None
        assert resolver.resolve("mast").error == ""

        # The last user closes it; a new user gets a new one.
        resolver.close()
        feed.release()  # b's
        assert feed.alive
        feed.release()  # a's: the last
        assert not feed.alive
        assert feed.process.wait(10.0) == 0  # the listener process ended with its socket
        again = acquire_tf_feed(a)
        assert again is not feed
        again.release()
        for n in (a, b, pub_node):
            n.destroy_node()


ORPHAN = """
import os, sys, time, rclpy
from lerf_ros.ros.tf import acquire_tf_feed
rclpy.init()
feed = acquire_tf_feed(rclpy.create_node("orphan_user"))
print(feed.process.pid, flush=True)
time.sleep(600)
"""


def test_listener_process_ends_when_its_parent_is_killed():
    _tf2()
    import signal

    p = subprocess.Popen(
        python_argv("-c", ORPHAN), cwd=str(REPO_ROOT), env=ros_env(), stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        child = int(p.stdout.readline())
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10.0)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}") or "Z" in _state(child), "the listener process outlived its parent"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group: a listener left behind by a failure too
        except ProcessLookupError:
            pass


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_killed_listener_process_is_restarted_and_its_feed_answers_again():
    """The real listener process killed: lookups say "TF listener restarting" (not a hang, not tf2's
    words), the feed starts a new one by itself (logged by the first user's node), and once /tf
    arrives again the lookups answer; /diagnostics' ``tf`` check counts the restart."""
    import signal

    tf2_msgs = _tf2()
    from rclpy.time import Time

    from lerf_ros.mapping.health import OK, WARN
    from lerf_ros.ros.tf import acquire_tf_feed

    with ros_context() as ctx:
        user = rclpy.create_node("tf_restart_user", context=ctx)
        pub_node = rclpy.create_node("tf_restart_pub", context=ctx)
        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        feed = acquire_tf_feed(user)
        try:
            T_base = _yaw(20.0, 1.0, 0.5)
            stamp = Time(seconds=50).to_msg()

            def found():
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(T_base, "map", "base_link", stamp)]))
                return feed.lookup("map", "base_link", stamp, 0.0)[0] is not None

            assert _wait(found, 30.0)
            assert feed.check().level == OK and feed.check().value("listener restarts") == "0"
            first = feed.process
            first.send_signal(signal.SIGKILL)
            assert _wait(lambda: feed.down_reason != "" or feed.restarts > 0, 20.0)
            if feed.restarts == 0:  # still restarting (the back-off): the reason says so
                T, _, reason = feed.lookup("map", "base_link", stamp, 5.0)
                assert T is None and reason.startswith("TF listener restarting (the TF listener process exited"), reason
                assert feed.check().level == WARN and "restarting" in feed.check().message
            assert _wait(lambda: feed.restarts == 1 and feed.down_reason == "", 60.0), feed.down_reason
            assert feed.process.pid != first.pid and feed.process.poll() is None
            assert first.poll() is not None  # the dead one was reaped
            assert _wait(found, 30.0), feed.lookup("map", "base_link", stamp, 0.0)
            check = feed.check()
            assert check.level == OK and check.value("listener restarts") == "1" and "restarted 1 time" in check.message
        finally:
            feed.release()
            user.destroy_node()
            pub_node.destroy_node()
    assert not feed.alive and feed.process.wait(10.0) == 0


def test_a_stopped_listener_process_is_replaced_and_its_feed_answers_again():
    """The real listener process stopped (SIGSTOP: alive, answering nothing, as one stuck in a DDS
    call): a lookup waiting for it fails with "TF listener restarting (... did not answer ...)"
    within the liveness timeout (5 s here), the stopped process is killed, a new one is started
    (counted in the ``tf`` check's restarts) and, once /tf arrives again, answers."""
    import signal
    import threading

    tf2_msgs = _tf2()
    from rclpy.time import Time

    from lerf_ros.mapping.health import OK
    from lerf_ros.ros.tf import TfFeed

    logs = []
    with ros_context() as ctx:
        pub_node = rclpy.create_node("tf_stop_pub", context=ctx)
        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        feed = TfFeed("tf_stop_user_tf", log=logs.append, liveness_s=5.0, backoff_s=(0.2, 2.0))
        try:
            T_base = _yaw(40.0, 0.5, 0.5)
            stamp = Time(seconds=70).to_msg()

            def found():
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(T_base, "map", "base_link", stamp)]))
                return feed.lookup("map", "base_link", stamp, 0.0)[0] is not None

            assert _wait(found, 30.0)
            time.sleep(6.5)  # quiet past the liveness timeout: a listener that answers its pings stays
            assert feed.restarts == 0 and feed.check().level == OK, logs
            first = feed.process
            waiting = []
            later = Time(seconds=80).to_msg()  # never sent: the lookup waits (up to 60 s)
            caller = threading.Thread(target=lambda: waiting.append(feed.lookup("map", "base_link", later, 60.0)))
            caller.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            first.send_signal(signal.SIGSTOP)
            caller.join(40.0)
            assert waiting and waiting[0][0] is None, waiting
            reason = waiting[0][2]
            assert reason.startswith("TF listener restarting (the TF listener process did not answer for"), reason
            assert time.monotonic() - t0 < 30.0
            assert first.wait(10.0) == -signal.SIGKILL
            assert _wait(lambda: feed.restarts == 1 and feed.down_reason == "", 60.0), (feed.down_reason, logs)
            assert feed.process.pid != first.pid and feed.process.poll() is None
            assert _wait(found, 30.0), feed.lookup("map", "base_link", stamp, 0.0)
            check = feed.check()
            assert check.level == OK and check.value("listener restarts") == "1", check
            assert sum("did not answer for" in line for line in logs) == 1, logs
        finally:
            feed.close()
            pub_node.destroy_node()
    assert feed.process.wait(10.0) == 0


def test_cancelled_lookups_free_the_listener_processes_workers():
    """Lookups given up by their caller (``cancel``) while they wait for a transform that does not
    come: the listener process stops waiting too, so after more cancelled lookups than it has
    workers, a lookup of a transform it has is answered at once (not after the 30 s the cancelled
    ones asked for), and no table keeps their entries (the link's, the listener's in flight)."""
    import threading

    tf2_msgs = _tf2()
    from rclpy.time import Time

    from lerf_ros.ros.tf import WORKER_THREADS, TfFeed

    with ros_context() as ctx:
        pub_node = rclpy.create_node("tf_cancel_free_pub", context=ctx)
        tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        feed = TfFeed("tf_cancel_free_tf")
        try:
            T_base = _yaw(-30.0, 1.5)
            stamp, later = Time(seconds=20).to_msg(), Time(seconds=25).to_msg()

            def found():
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(T_base, "map", "base_link", stamp)]))
                return feed.lookup("map", "base_link", stamp, 0.0)[0] is not None

            assert _wait(found, 30.0)
            for _ in range(WORKER_THREADS + 1):
                cancel = threading.Event()
                threading.Timer(0.3, cancel.set).start()
                t0 = time.monotonic()
                assert feed.lookup("map", "base_link", later, 30.0, cancel) == (None, None, CANCELLED)
                assert time.monotonic() - t0 < 5.0
            t0 = time.monotonic()
            T, used, reason = feed.lookup("map", "base_link", stamp, 0.0)
            took = time.monotonic() - t0
            assert T is not None, reason
            np.testing.assert_allclose(T, T_base, atol=1e-6)
            assert took < 5.0, took
            assert feed._link.calls_waiting == 0
            assert _wait(lambda: feed.in_flight == 0, 10.0), feed.in_flight  # refreshed by each ping's answer
            assert feed.check().value("listener lookups in flight") == "0"
            assert feed.restarts == 0
        finally:
            feed.close()
            pub_node.destroy_node()


def test_deactivate_gives_up_a_waiting_tf_lookup_and_no_frame_reaches_the_session_after(scene, tmp_path):
    """An image whose pose TF does not have yet waits in its lookup (up to ``tf_timeout_s``, 30 s
    here); deactivating the trainer then must not leave the ingest thread behind: the lookup is given
    up, the thread has ended when deactivate returns, and when the transform arrives afterwards, no
    frame reaches the session (no keyframe, no drop)."""
    import threading

    tf2_msgs = _tf2()
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image

    from lerf_ros.config import preset
    from lerf_ros.ros.convert import K_to_camera_info, numpy_to_image
    from lerf_ros.ros.trainer_node import TrainerNode
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    cfg = preset("tiny").override(
        {
            "teacher.kind": "ground_truth",
            "output_dir": str(tmp_path),
            "trainer.checkpoint_every": 0,
            "keyframes.min_keyframes_to_train": 2,
        }
    )
    overrides = [
        Parameter("autostart", value=False),
        Parameter("pose_source", value="tf"),
        Parameter("world_frame", value="map"),
        Parameter("tf_timeout_s", value=30.0),
        Parameter("tf_relookup_period_s", value=0.0),
        Parameter("input_qos_reliability", value="reliable"),
    ]
    ingest_threads = lambda: [t for t in threading.enumerate() if t.name == "lerf_ingest" and t.is_alive()]  # noqa: E731
    with ros_context() as ctx:
        trainer = TrainerNode(
            cfg,
            teacher=GroundTruthTeacher(scene),
            name="lerf_trainer_cancel",
            context=ctx,
            parameter_overrides=overrides,
        )
        pub_node = rclpy.create_node("tf_cancel_pub", context=ctx)
        executor = MultiThreadedExecutor(num_threads=2, context=ctx)
        executor.add_node(trainer)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            assert trainer.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert trainer.trigger_activate() == TransitionCallbackReturn.SUCCESS
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            image_pub = pub_node.create_publisher(Image, "image", qos)
            info_pub = pub_node.create_publisher(CameraInfo, "camera_info", qos)
            tf_pub = pub_node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
            f = scene.frames[0]
            early, late = Time(seconds=100).to_msg(), Time(seconds=105).to_msg()

            def send_tf(stamp):
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(f.c2w, "map", CAMERA, stamp)]))

            # TF up to t = 100 s: the listener has /tf, but not the camera at 105 s.
            assert _wait(lambda: send_tf(early) or trainer._tf.lookup("map", CAMERA, early, 0.0)[0] is not None, 30.0)
            assert _wait(lambda: min(image_pub.get_subscription_count(), info_pub.get_subscription_count()) > 0, 30.0)
            info_pub.publish(K_to_camera_info(f.K, f.width, f.height, late, CAMERA))
            time.sleep(0.5)
            image_pub.publish(numpy_to_image(f.rgb, "rgb8", late, CAMERA))
            # The image is taken by the ingest thread, which now waits in its TF lookup.
            assert _wait(lambda: trainer.frames_received >= 1 and not trainer.cameras[0].queue, 30.0)
            time.sleep(1.0)
            assert trainer.drops.count == 0 and trainer.trainer.keyframes.stats()["count"] == 0
            assert ingest_threads()
            # /diagnostics has the TF listener's check (running, no restarts).
            tf_check = next(c for c in trainer._health_checks() if c.name == "tf")
            assert tf_check.level == 0 and tf_check.value("listener restarts") == "0", tf_check

            t0 = time.monotonic()
            assert trainer.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            took = time.monotonic() - t0
            assert not ingest_threads(), "the ingest thread outlived deactivate"
            assert took < 10.0, took
            # The transform arrives: the lookup would now succeed, but it was given up.
            for _ in range(10):
                send_tf(late)
                time.sleep(0.2)
            assert trainer.trainer.keyframes.stats()["count"] == 0 and trainer.cameras[0].keyframes == 0
            assert trainer.drops.count == 0, trainer.drops.counts()
            assert trainer.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        finally:
            executor.shutdown(timeout_sec=5.0)
            trainer.close()
            trainer.destroy_node()
            pub_node.destroy_node()


# ---------------------------------------------------------------------------------------------- trainer process
W, H = 64, 48
CAMERA = "camera_optical_frame"


@pytest.fixture(scope="module")
def scene():
    from lerf_ros.data.synthetic import make_scene

    return make_scene(seed=11, width=W, height=H, n_frames=16, nthreads=1)


def _params(path, scene_dir, out_dir):
    trainer = {
        "pose_source": "tf",
        "odom_frame": "odom",
        "status_rate_hz": 4.0,
        "input_qos_reliability": "reliable",
        "input_qos_depth": 50,
        "tf_timeout_s": 0.3,
        "tf_relookup_period_s": 1.0,
    }
    return write_node_params(path, scene_dir, out_dir, common={"trainer": {"snapshot_every": 10}}, trainer=trainer)


def _listener_processes(pid):
    """Children of ``pid`` that run the TF listener (``python -m lerf_ros.ros.tf``)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    if b"lerf_ros.ros.tf" in c.read():
                        found.append(int(child))
    return found


def test_trainer_says_no_tf_yet_then_trains_beside_a_busy_arm_and_answers_in_a_moving_frame(scene, tmp_path):
    """Both nodes in one process (the default launch): one TF listener process for the two."""
    tf2_msgs = _tf2()
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.time import Time
    from sensor_msgs.msg import CameraInfo, Image

    from lerf_ros.msg import TrainingStatus
    from lerf_ros.ros.convert import K_to_camera_info, numpy_to_image
    from lerf_ros.srv import Query

    scene_dir = tmp_path / "scene"
    scene.save(scene_dir, preview=False)
    domain = unique_domain_id()
    params = _params(tmp_path / "params.yaml", scene_dir, tmp_path / "out")
    proc = start_process(
        python_argv("-m", "lerf_ros.ros.lerf_node", "--ros-args", "--params-file", str(params)), env=ros_env(domain)
    )
    try:
        with ros_context(domain) as ctx:
            node = rclpy.create_node("tf_streamer", context=ctx)
            qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
            image_pub = node.create_publisher(Image, "image", qos)
            info_pub = node.create_publisher(CameraInfo, "camera_info", qos)
            tf_pub = node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
            static_pub = node.create_publisher(
                tf2_msgs.TFMessage, "/tf_static", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            )
            last = []
            node.create_subscription(TrainingStatus, "/lerf/status", last.append, 10)
            ok = spin_until(
                node,
                lambda: (last and image_pub.get_subscription_count() > 0) or proc.poll() is not None,
                120.0,
            )
            assert ok and proc.poll() is None, process_output(proc)

            def send_image(i, ns):
                f = scene.frames[i % len(scene.frames)]
                stamp = Time(nanoseconds=ns).to_msg()
                info_pub.publish(K_to_camera_info(f.K, f.width, f.height, stamp, CAMERA))
                image_pub.publish(numpy_to_image(f.rgb, "rgb8", stamp, CAMERA))

            def now_ns():
                return node.get_clock().now().nanoseconds

            # Images with no TF at all: dropped, and the reason says what is missing.
            for i in range(3):
                send_image(i, now_ns())
                spin_until(node, lambda: False, 0.3)
            assert spin_until(node, lambda: last[-1].frames_dropped >= 1, 30.0), process_output(proc)
            assert any("no TF received yet on /tf" in r for r in last[-1].drop_reasons), list(last[-1].drop_reasons)
            assert "no TF received yet on /tf (is the robot's TF tree published?)" in process_output(proc)

            # The tree: map -> odom (ahead, 10 Hz), odom -> base_link at the image stamps, static mounts,
            # and an arm of 20 transforms in one message at 50 Hz.
            optical = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
            mount = _yaw(0.0, 0.1, 0.0, 0.8)
            map_to_odom = _yaw(15.0, 0.3, -0.2)
            static_pub.publish(
                tf2_msgs.TFMessage(
                    transforms=[
                        _transform(mount, "base_link", "camera_link", Time().to_msg()),
                        _transform(optical, "camera_link", CAMERA, Time().to_msg()),
                    ]
                )
            )
            camera_to_base = np.linalg.inv(mount @ optical)
            dropped_before = last[-1].frames_dropped
            t0 = time.monotonic()
            next_image = next_odom = t0
            i = 0
            while time.monotonic() - t0 < 90.0 and not (last[-1].frames_kept >= 4 and last[-1].step >= 20):
                now = time.monotonic()
                ns = now_ns()
                arm = []
                parent = "base_link"
                for j in range(20):
                    arm.append(
                        _transform(
                            _yaw(10 * math.sin(now + j), 0, 0, 0.05), parent, f"arm_{j}", Time(nanoseconds=ns).to_msg()
                        )
                    )
                    parent = f"arm_{j}"
                tf_pub.publish(tf2_msgs.TFMessage(transforms=arm))
                if now >= next_odom:
                    ahead = Time(nanoseconds=ns + 200_000_000).to_msg()
                    tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(map_to_odom, "map", "odom", ahead)]))
                    next_odom += 0.1
                if now >= next_image and now - t0 > 0.5:
                    f = scene.frames[i % len(scene.frames)]
                    base = np.linalg.inv(map_to_odom) @ f.c2w @ camera_to_base
                    tf_pub.publish(
                        tf2_msgs.TFMessage(
                            transforms=[_transform(base, "odom", "base_link", Time(nanoseconds=ns).to_msg())]
                        )
                    )
                    send_image(i, ns)
                    last_base_ns = ns
                    i += 1
                    next_image += 0.25
                spin_until(node, lambda: False, 0.02)
            s = last[-1]
            assert s.frames_kept >= 4 and s.step >= 20, (
                s.frames_kept,
                s.step,
                list(s.drop_reasons),
                process_output(proc),
            )
            # Frames sent with the tree: (almost) all found their pose.
            tf_drops = s.frames_dropped - dropped_before
            assert tf_drops <= max(2, i // 4), (tf_drops, i, list(s.drop_reasons), list(s.drop_counts))
            # One listener process serves the trainer and the query node.
            assert len(_listener_processes(proc.pid)) == 1, _listener_processes(proc.pid)

            # An answer in base_link (it moves: odom -> base_link at each image) is stamped with the time
            # of the transform used: the last base_link sent (the streaming has stopped).
            client = node.create_client(Query, "/lerf/query")
            assert spin_until(node, lambda: client.service_is_ready(), 60.0)
            text = scene.objects[0].class_name
            resp = None
            deadline = time.monotonic() + 120.0
            while time.monotonic() < deadline:
                resp = call(node, client, Query.Request(text=text, threshold=0.01, frame_id="base_link"))
                if resp.success or "unknown frame" in resp.message:
                    break
                spin_until(node, lambda: False, 2.0)  # the first snapshot is still being prepared
            assert resp is not None and resp.success, resp.message
            assert resp.cloud.header.frame_id == "base_link"
            stamp = resp.cloud.header.stamp
            assert stamp.sec * 1_000_000_000 + stamp.nanosec == last_base_ns, (stamp, last_base_ns)

            # The command line asks the same and prints the frame and that stamp.
            argv = ["query", text, "--service", "--threshold", "0.01", "--frame-id", "base_link"]
            out = subprocess.run(
                python_argv("-m", "lerf_ros.cli", *argv),
                cwd=str(REPO_ROOT),
                env=ros_env(domain),
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"positions in frame 'base_link', stamp {last_base_ns * 1e-9:.3f} s" in out.stdout, out.stdout

            # A loop closure: map -> odom moves 20 cm; the keyframes, looked up again at their own stamps
            # through odom (one request to the listener for all), take the corrected poses.
            assert last[-1].pose_corrections == 0
            moved = _yaw(15.0, 0.5, -0.2)

            def corrected():
                ahead = Time(nanoseconds=now_ns() + 200_000_000).to_msg()
                tf_pub.publish(tf2_msgs.TFMessage(transforms=[_transform(moved, "map", "odom", ahead)]))
                return last[-1].pose_corrections >= 1

            assert spin_until(node, corrected, 30.0), (last[-1].pose_corrections, process_output(proc))
            node.destroy_node()
    finally:
        code = stop_process(proc, timeout=30.0)
    assert code == 0, process_output(proc)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
