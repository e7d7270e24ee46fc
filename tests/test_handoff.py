"""HandoffLock: a loop that takes the session lock again at once lets waiting service calls in first."""

import threading
import time

from lerf_ros.mapping.handoff import HandoffLock


def test_waiting_threads_are_counted_and_get_the_lock_before_the_loop_takes_it_again():
    lock = HandoffLock()
    got = []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.append(time.monotonic()), lock.release()))
    waiter.start()
    deadline = time.monotonic() + 5.0
    while lock.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert lock.waiting == 1
    lock.release()
    assert lock.yield_to_waiters(max_wait_s=5.0)  # returns once the waiter has acquired it
    released_at = time.monotonic()
    with lock:  # the loop's next step
        pass
    waiter.join(5.0)
    assert got and got[0] <= released_at
    assert lock.waiting == 0


def test_a_busy_loop_does_not_starve_a_service_call():
    lock = HandoffLock()
    stop = threading.Event()
    steps = [0]

    def loop():
        while not stop.is_set():
            lock.yield_to_waiters()
            with lock:
                t_end = time.perf_counter() + 0.02  # a 20 ms "training step" holding the interpreter
                while time.perf_counter() < t_end:
                    pass
                steps[0] += 1

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        while steps[0] < 3:
            time.sleep(0.005)
        waits = []
        for _ in range(5):
            t0 = time.monotonic()
            with lock:
                waits.append(time.monotonic() - t0)
            time.sleep(0.03)
        assert max(waits) < 1.0, waits
        assert steps[0] > 3  # the loop kept going between the calls
    finally:
        stop.set()
        t.join(5.0)


def test_reentrant_and_timeout():
    lock = HandoffLock()
    with lock:
        with lock:  # re-entrant for the owner
            assert lock.acquire(blocking=False)
            lock.release()
        other = []
        th = threading.Thread(target=lambda: other.append(lock.acquire(timeout=0.05)))
        th.start()
        th.join(5.0)
        assert other == [False]
    assert lock.waiting == 0
    assert lock.yield_to_waiters(max_wait_s=0.0)
