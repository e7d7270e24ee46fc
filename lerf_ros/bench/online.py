"""The online phase of the benchmark: a scene streamed into an ``OnlineTrainer`` from a feeder thread
as a live camera would, with periodic checks of the newest snapshot, training rates and resident
memory (``run_online``)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

from lerf_ros.bench.machine import Progress, rss_mb
from lerf_ros.bench.metrics import percentile
from lerf_ros.bench.settings import BenchSettings, LogFn


def _stream_frame(scene, k: int, rate_hz: float, start_stamp: float):
    """Frame ``k`` of an endless stream cycling through the scene's trajectory: fresh arrays (as a
    camera driver would deliver) and a stamp ``k / rate_hz`` after the start."""
    f = scene.frames[k % len(scene.frames)]
    return dataclasses.replace(
        f,
        rgb=f.rgb.copy(),
        depth=None if f.depth is None else f.depth.copy(),
        instance=None if f.instance is None else f.instance.copy(),
        stamp=start_stamp + k / rate_hz,
        index=k,
        meta=dict(f.meta, stream_index=k),
    )


class _Feeder:
    """Submits stream frames to an online trainer from a thread, at a fixed rate or as fast as it
    takes them (``rate_hz`` None)."""

    def __init__(
        self,
        trainer,
        scene,
        rate_hz: Optional[float],
        start_index: int = 0,
        limit: Optional[int] = None,
        stamp_rate_hz: float = 5.0,
    ) -> None:
        self.trainer, self.scene, self.rate_hz, self.limit = trainer, scene, rate_hz, limit
        self.stamp_rate_hz = stamp_rate_hz
        self.next_index = start_index
        self.kept = 0
        self.rejected = 0
        self.last_reason = ""
        self.first_submit: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench_feeder", daemon=True)

    def start(self) -> "_Feeder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        t0 = time.perf_counter()
        n0 = self.next_index
        while not self._stop.is_set():
            if self.limit is not None and self.next_index >= self.limit:
                return
            frame = _stream_frame(self.scene, self.next_index, self.stamp_rate_hz, 100.0)
            if self.first_submit is None:
                self.first_submit = time.perf_counter()
            res = self.trainer.submit(frame)
            self.kept += int(res.kept)
            self.rejected += int(res.rejected)
            if res.rejected:
                self.last_reason = res.reason
            self.next_index += 1
            if self.rate_hz:
                wait = t0 + (self.next_index - n0) / self.rate_hz - time.perf_counter()
                if wait > 0:
                    self._stop.wait(wait)


def run_online(
    scene, cfg, settings: BenchSettings, time_cap_s: float, progress: Progress, log: LogFn
) -> Dict[str, Any]:
    """The online phase (see ``lerf_ros.bench``) on one scene."""
    from lerf_ros.mapping.online import OnlineTrainer
    from lerf_ros.query import QueryEngine
    from lerf_ros.teachers.ground_truth import GroundTruthTeacher

    tmp = tempfile.mkdtemp(prefix="lerf_bench_")
    messages: List[str] = []

    def trainer_log(level: str, text: str) -> None:
        if level != "info":
            messages.append(f"{level}: {text}")
            log(f"online trainer {level}: {text}")

    # Periodic checkpoints off (they would cost the online side time the offline side does not
    # pay) and no step limit within the phase.
    ocfg = cfg.override(
        {"output_dir": tmp, "trainer.checkpoint_every": 0, "trainer.max_steps": max(cfg.trainer.max_steps, 10**7)}
    )
    teacher = GroundTruthTeacher(scene)
    ot = OnlineTrainer(ocfg, teacher=teacher, log=trainer_log, snapshot_every=settings.online_snapshot_every)
    engine = QueryEngine(ocfg.query, teacher.encode_text)
    names = [o.name for o in scene.objects]
    engine.texts.embed(names + list(ocfg.query.canonical_phrases))
    rays = ocfg.trainer.rays_per_batch
    first_correct: Dict[str, Optional[float]] = {n: None for n in names}
    checks: List[Dict[str, Any]] = []
    windows: List[Dict[str, float]] = []
    memory: List[Dict[str, float]] = []
    latencies: List[float] = []
    all_correct_s: Optional[float] = None
    rss0 = rss_mb()
    ot.start()
    feeder = _Feeder(ot, scene, settings.online_rate_hz, stamp_rate_hz=settings.online_rate_hz).start()
    t_begin = time.perf_counter()
    bar = progress.bar(total=int(time_cap_s), desc=f"online seed {scene.seed}", unit="s")

    origin: List[float] = []  # time of the stream's first frame

    def sample_memory(tag: str) -> None:
        if not origin:
            origin.append(feeder.first_submit or t_begin)
        st = ot.keyframes.stats()
        memory.append(
            {
                "t_s": time.perf_counter() - origin[0],
                "frames": feeder.next_index,
                "rss_mb": rss_mb(),
                "keyframes": st["count"],
                "store_mb": st["bytes"] / 2**20,
                "evicted": st["evicted"],
                "phase": tag,
            }
        )

    try:
        while True:
            elapsed = time.perf_counter() - t_begin
            if elapsed >= time_cap_s or (all_correct_s is not None and elapsed >= settings.online_min_s):
                break
            # undisturbed training while frames arrive
            w0, s0, c0 = time.perf_counter(), ot.step, time.process_time()
            time.sleep(min(settings.online_check_every_s, max(0.5, time_cap_s - elapsed)))
            w1, s1, c1 = time.perf_counter(), ot.step, time.process_time()
            if s0 > 0 and s1 > s0:
                windows.append({"wall_s": w1 - w0, "cpu_s": c1 - c0, "steps": s1 - s0})
            sample_memory("online")
            snap = ot.latest_snapshot
            t_rel = time.perf_counter() - (feeder.first_submit or t_begin)
            if snap is None:
                checks.append(
                    {"t_s": t_rel, "step": ot.step, "note": "no snapshot yet", "keyframes": ot.status().keyframes}
                )
                bar.update(int(time.perf_counter() - t_begin) - bar.n)
                continue
            engine.set_snapshot(snap)
            tp = time.perf_counter()
            prep = engine.prepare()
            prep_ms = 1000 * (time.perf_counter() - tp)
            correct = {}
            for obj in scene.objects:
                r = engine.query(obj.name)
                latencies.append(r.timings.get("total", 0.0))
                correct[obj.name] = bool(
                    r.success and len(r.points) and obj.contains(r.points[:1], settings.grow_3d)[0]
                )
            t_ans = time.perf_counter() - (feeder.first_submit or t_begin)
            for n, ok in correct.items():
                if ok and first_correct[n] is None:
                    first_correct[n] = t_ans
            if all(correct.values()) and all_correct_s is None:
                all_correct_s = t_ans
            surf = engine.surface()
            checks.append(
                {
                    "t_s": t_ans,
                    "snapshot_step": int(snap.step),
                    "step_now": ot.step,
                    "surface_step": -1 if surf is None else int(surf.step),
                    "surface_points": 0 if surf is None else len(surf),
                    "prepare_ms": prep_ms,
                    "prepare_surface_ms": prep["surface"],
                    "keyframes": ot.status().keyframes,
                    "frames": feeder.next_index,
                    "correct": sorted(n for n, ok in correct.items() if ok),
                }
            )
            bar.update(int(time.perf_counter() - t_begin) - bar.n)
            bar.set_postfix(
                {"step": ot.step, "correct": f"{sum(correct.values())}/{len(correct)}", "kf": ot.status().keyframes},
                refresh=False,
            )
            log(
                f"online t={t_ans:5.0f} s: snapshot step {snap.step} (surface of step "
                f"{checks[-1]['surface_step']}), {sum(correct.values())}/{len(correct)} objects correct, "
                f"{ot.status().keyframes} keyframes, {feeder.next_index} frames streamed"
            )
        online_s = time.perf_counter() - (feeder.first_submit or t_begin)
        feeder.stop()
        frames_online = feeder.next_index
        kept, rejected = feeder.kept, feeder.rejected
        # top up the stream for the memory number: as fast as the trainer takes frames
        t_mem = time.perf_counter()
        if feeder.next_index < settings.stream_frames:
            feeder = _Feeder(
                ot,
                scene,
                None,
                start_index=feeder.next_index,
                limit=settings.stream_frames,
                stamp_rate_hz=settings.online_rate_hz,
            ).start()
            mbar = progress.bar(
                total=settings.stream_frames, initial=feeder.next_index, desc="stream (memory)", unit="frame"
            )
            while not feeder.done():
                time.sleep(1.0)
                mbar.update(feeder.next_index - mbar.n)
                if not memory or feeder.next_index - memory[-1]["frames"] >= 50:
                    sample_memory("top-up")
            mbar.close()
            feeder.stop()
            kept, rejected = kept + feeder.kept, rejected + feeder.rejected
        stream_s = time.perf_counter() - t_mem
        sample_memory("end")
        st = ot.keyframes.stats()
        status = ot.status()
        center, scale = ot.session.bounds or (None, None)
        bounds = {"scene_center": center, "scene_scale": scale}
    finally:
        bar.close()
        feeder.stop()
        ot.close()
        shutil.rmtree(tmp, ignore_errors=True)

    wall = sum(w["wall_s"] for w in windows)
    cpu = sum(w["cpu_s"] for w in windows)
    steps = sum(w["steps"] for w in windows)
    full_at = next((m for m in memory if m["keyframes"] >= ocfg.keyframes.max_keyframes), None)
    growth = (memory[-1]["rss_mb"] - full_at["rss_mb"]) if full_at is not None else None
    # over the second half of the stream (the query engine's caches are warm by then)
    half = next((m for m in memory if m["frames"] >= memory[-1]["frames"] / 2), None) if memory else None
    growth_half = memory[-1]["rss_mb"] - half["rss_mb"] if half is not None and half is not memory[-1] else None
    times = list(first_correct.values())
    res = {
        "seed": scene.seed,
        "rate_hz": settings.online_rate_hz,
        "time_cap_s": time_cap_s,
        "online_s": online_s,
        "first_correct_s": first_correct,
        "first_correct_any_s": min([t for t in first_correct.values() if t is not None], default=None),
        "each_correct_s": max(times) if times and all(t is not None for t in times) else None,
        "all_correct_s": all_correct_s,
        "objects_correct_fraction": float(np.mean([t is not None for t in first_correct.values()])),
        "check_every_s": settings.online_check_every_s,
        "checks": checks,
        "rays_per_s": steps * rays / wall if wall > 0 and steps else None,
        "rays_per_cpu_s": steps * rays / cpu if cpu > 0 and steps else None,
        "measured_steps": steps,
        "measured_wall_s": wall,
        "final_step": status.step,
        "query_latency_ms_p50": percentile(latencies, 50),
        "query_latency_ms_p95": percentile(latencies, 95),
        "frames_streamed_online": frames_online,
        "frames_streamed": feeder.next_index,
        "frames_kept": kept,
        "frames_rejected": rejected,
        "stream_topup_s": stream_s,
        "store": {
            k: st[k]
            for k in (
                "count",
                "bytes",
                "with_features",
                "feature_bytes",
                "max_keyframes",
                "max_bytes",
                "added",
                "evicted",
            )
        },
        "rss_start_mb": rss0,
        "rss_end_mb": memory[-1]["rss_mb"] if memory else rss_mb(),
        "rss_growth_after_store_full_mb": growth,
        "rss_growth_second_half_mb": growth_half,
        "memory_samples": memory,
        "store_bounded": bool(st["count"] <= st["max_keyframes"] and st["bytes"] <= st["max_bytes"]),
        "trainer_messages": messages[:20],
        **bounds,
    }
    return res
