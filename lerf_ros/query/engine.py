"""The query engine: text in; scored 3D points and grasp-target poses out. No ROS here.

One query:
1. validate the request (every problem becomes ``success=False`` and a message saying what to fix);
2. take the prepared snapshot (``PreparedSnapshot``: the field with its surface points and
   projected features, swapped in as one object by ``prepare``; see "Snapshots" below);
3. embed the text, the canonical phrases and the request's negatives (LRU-cached, the query
   itself left out of the negatives);
4. scale search: for every candidate scale evaluate the language field at every surface point and
   the relevancy ``min_i exp(t phi.q) / (exp(t phi.q) + exp(t phi.c_i))``; the answer's scale is
   the one with the highest maximum relevancy (the LERF paper's choice) and the points are scored
   at that scale;
5. points at or above the threshold, most relevant first, capped at ``max_points``;
6. grasps on the chosen object cluster (``lerf_ros.query.grasp``, which documents the gripper frame);
7. optionally everything expressed in another frame (``world_to_target``).

Speed (details in ``lerf_ros.query.relevancy``). Per (snapshot, surface) pair the engine stores
the language field at every surface point and scale as coefficients in the field's output basis
(``ProjectedFeatures``, bounded by ``query.feature_cache_mb``), so a query costs one small matrix
product per scale instead of S field evaluations; the first query after a new snapshot pays for
them at preparation. Without them (too large), the
field is evaluated per query, projected onto the span of the query's text embeddings. Either way
the field answers all candidate scales of a chunk of points in one call
(``FieldSnapshot.language_multi_scale``: the real field runs its hash grids once per point).

Snapshots. ``set_snapshot`` only hands the engine a newer field; ``prepare`` (the query node runs it
on a background thread, ``lerf_ros.query.preparer``) extracts its surface points (reusing the
previous ones while training has not moved on by ``query.refresh_every_steps``) and builds its
projected features off to the side, then swaps the prepared snapshot in atomically. Queries are
answered from the prepared snapshot and never wait for a preparation: meanwhile they get the
previous one, and say which (``QueryResult.step``, ``snapshot_version``, ``snapshot_age_s``). Only
the very first snapshot has nothing before it: a query then prepares it itself (or waits for the
preparation already running), as the first query of a process always did. While a new snapshot is
prepared, two sets of projected features are held (at most twice ``query.feature_cache_mb``).
A preparation that fails leaves the previous snapshot answering; the failure is reported by
``status()`` (and, when there is no previous snapshot, by the queries).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lerf_ros.config import QueryConfig
from lerf_ros.data.frame import FrameError, check_pose
from lerf_ros.field.snapshot import FieldSnapshot
from lerf_ros.query.cancel import Cancelled, PacedStop, StopFlag
from lerf_ros.query.grasp import Grasp, GripperModel, plan_grasps
from lerf_ros.query.relevancy import FeatureCache, ProjectedFeatures, scale_search
from lerf_ros.query.request import excerpt, format_relevancy, text_problem
from lerf_ros.query.surface import SurfaceCache, SurfaceError, SurfacePoints
from lerf_ros.teachers.none import NO_LANGUAGE_MESSAGE
from lerf_ros.teachers.text import TextEncoderCache, negative_phrases

NO_MODEL_MESSAGE = "no model yet: the trainer has not produced a snapshot (waiting for keyframes)"
CLOSED_MESSAGE = "the query engine is shutting down: ask again once the node is back"

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """The answer to one query (arrays in the requested frame; empty arrays on failure).

    Attributes:
        success: False when the request was bad or nothing qualified; ``message`` says why.
        message: what happened, or what to fix.
        step: training step of the snapshot that answered (-1 when none).
        scale: chosen language scale (m); 0 when no scale search ran.
        max_relevancy: highest relevancy over the surface points at the chosen scale.
        points: (K, 3) float32 positions, most relevant first.
        colors: (K, 3) uint8 colours.
        relevancy: (K,) float32 relevancy, descending.
        grasps: ranked grasp targets (best first).
        timings: milliseconds: 'surface' (0 unless this query refreshed the surface points),
            'features' (0 unless this query computed the snapshot's projected features), 'text',
            'field' (the scale search), 'cluster' (clustering and grasps), 'total'.
        surface_step: training step the surface points were extracted at.
        num_candidates: surface points scored.
        grasp_points: the most relevant points the grasps were planned on (``query.grasp_focus``).
        snapshot_version: which prepared snapshot answered (1 = the first this engine prepared; 0:
            none).
        snapshot_age_s: seconds since the answering snapshot was handed to ``set_snapshot`` (-1: none).
    """

    success: bool
    message: str
    step: int = -1
    scale: float = 0.0
    max_relevancy: float = 0.0
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    relevancy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    grasps: List[Grasp] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    surface_step: int = -1
    num_candidates: int = 0
    grasp_points: int = 0
    snapshot_version: int = 0
    snapshot_age_s: float = -1.0


@dataclass(frozen=True)
class PreparedSnapshot:
    """A snapshot with everything its queries need, swapped in as one object (never modified).

    Attributes:
        snapshot: the field.
        surface: its surface points (possibly extracted at an earlier step, see
            ``query.refresh_every_steps``).
        xyz: (N, 3) float32 ``surface.xyz`` on the snapshot's device.
        features: the projected language features at ``xyz``, or None (``features_note`` says why).
        features_note: why there are no features ("" when there are).
        version: 1 for the first snapshot the engine prepared, one more for each later one.
        taken_at: ``time.monotonic()`` when ``set_snapshot`` received the snapshot.
        prepared_ms: milliseconds spent: 'surface' (0 when the previous surface was kept), 'features'.
    """

    snapshot: FieldSnapshot
    surface: SurfacePoints
    xyz: torch.Tensor
    features: Optional[ProjectedFeatures]
    features_note: str
    version: int
    taken_at: float
    prepared_ms: Dict[str, float]

    @property
    def step(self) -> int:
        return int(self.snapshot.step)

    def age_s(self, now: Optional[float] = None) -> float:
        """Seconds since the snapshot was handed to the engine."""
        return (time.monotonic() if now is None else now) - self.taken_at


class QueryEngine:
    """Answers text queries from the prepared snapshot. Thread-safe: any number of concurrent
    ``query`` calls; ``set_snapshot`` offers a newer model and ``prepare`` swaps it in atomically
    once prepared (a running query keeps the one it started with; see the module docstring)."""

    def __init__(self, cfg: QueryConfig, encode_text: Callable[[List[str]], torch.Tensor]) -> None:
        self.cfg = cfg.check()
        self.texts = TextEncoderCache(encode_text, cfg.text_cache_size)
        self.gripper = GripperModel(
            max_width=cfg.gripper_max_width,
            finger_depth=cfg.gripper_finger_depth,
            width_margin=cfg.grasp_width_margin,
            support_clearance=max(0.01, 1.5 * cfg.voxel_size),
        ).check()
        self._lock = threading.Lock()
        self._offered: Optional[Tuple[FieldSnapshot, float]] = None  # (newest snapshot, monotonic time)
        self._prepared: Optional[PreparedSnapshot] = None  # the one queries are answered from
        self._failed: Optional[Tuple[FieldSnapshot, str]] = None  # last preparation failure
        self._version = 0
        self._prepare_lock = threading.Lock()  # one preparation at a time
        self.stop = StopFlag()
        """Set by ``close``; preparation work checks it between chunks."""
        self._surfaces = SurfaceCache(cfg, self.stop)
        self._features = FeatureCache(int(cfg.feature_cache_mb * 2**20), self.stop)

    def close(self) -> None:
        """Stop: preparation in progress (``prepare``, or a query preparing a new snapshot) ends at
        its next chunk boundary by raising ``Cancelled``, and later queries are refused."""
        self.stop.set()

    # ------------------------------------------------------------------ model
    def set_snapshot(self, snapshot: FieldSnapshot) -> None:
        """Offer a newer model (read-only; never modified here): queries are answered from it once
        ``prepare`` has prepared it (the very first one: by the first query, if nobody did)."""
        if not isinstance(snapshot, FieldSnapshot):
            raise TypeError(
                f"{type(snapshot).__name__} is not a FieldSnapshot: it needs step, clip_dim, device, "
                "cameras, language, language_multi_scale, language_basis, density and render"
            )
        with self._lock:
            self._offered = (snapshot, time.monotonic())

    @property
    def snapshot(self) -> Optional[FieldSnapshot]:
        """The newest snapshot offered by ``set_snapshot`` (prepared or not)."""
        with self._lock:
            return None if self._offered is None else self._offered[0]

    @property
    def prepared(self) -> Optional[PreparedSnapshot]:
        """The prepared snapshot queries are answered from now (None before the first)."""
        with self._lock:
            return self._prepared

    def current_step(self) -> int:
        """Training step of the snapshot that answers now; before the first is prepared, of the one
        offered; -1 when none."""
        with self._lock:
            if self._prepared is not None:
                return self._prepared.step
            return -1 if self._offered is None else int(self._offered[0].step)

    def surface(self) -> Optional[SurfacePoints]:
        """Surface points of the prepared snapshot, or None before the first is prepared."""
        prep = self.prepared
        return None if prep is None else prep.surface

    def scene_points(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(xyz (N, 3) float32, rgb (N, 3) uint8) of the prepared surface, or None without one."""
        s = self.surface()
        return None if s is None else (s.xyz, s.rgb)

    def prepare(self, cpu_share: float = 1.0) -> Dict[str, float]:
        """Prepare the newest offered snapshot (surface points, projected features; only the surface
        points for a snapshot without a language field) and swap it in for the queries. Queries
        meanwhile are answered from the previous prepared snapshot. Returns milliseconds spent:
        'surface', 'features' (both 0 when the newest is prepared already).

        ``cpu_share`` in (0, 1]: the share of wall time the work may take; after each chunk it pauses
        for the rest (``lerf_ros.query.cancel.PacedStop``), leaving the CPU to training and queries.
        Raises ``lerf_ros.query.cancel.Cancelled`` when ``close`` is called meanwhile, and the
        extraction's or the field's error when preparation fails (the previous snapshot keeps
        answering; ``status()['error']`` says why)."""
        out = {"surface": 0.0, "features": 0.0}
        with self._prepare_lock:
            with self._lock:
                offered, current = self._offered, self._prepared
            if offered is None or (current is not None and current.snapshot is offered[0]):
                return out
            snap, taken_at = offered
            stop = self.stop if cpu_share >= 1.0 else PacedStop(self.stop, cpu_share)
            try:
                t0 = time.perf_counter()
                surface, computed = self._surfaces.get(snap, stop)
                if computed:
                    out["surface"] = 1000 * (time.perf_counter() - t0)
                xyz = self._surfaces.xyz_tensor(surface, torch.device(snap.device))
                feats, note = None, "no surface points" if not len(surface) else "no language field"
                if len(surface) and int(snap.clip_dim) > 0:  # no language field: the surface is all there is
                    t1 = time.perf_counter()
                    scales = torch.tensor(self.cfg.scales, dtype=torch.float32, device=xyz.device)
                    feats, built = self._features.get(snap, surface, xyz, scales, self.cfg.field_chunk_points, stop)
                    note = self._features.note
                    if built:
                        out["features"] = 1000 * (time.perf_counter() - t1)
            except Cancelled:
                raise
            except SurfaceError as exc:
                with self._lock:
                    self._failed = (snap, f"cannot extract surface points at step {int(snap.step)}: {exc}")
                raise
            except Exception as exc:
                with self._lock:
                    self._failed = (
                        snap,
                        f"preparing the model at step {int(snap.step)} failed: {type(exc).__name__}: {exc}",
                    )
                raise
            with self._lock:
                self._version += 1
                self._prepared = PreparedSnapshot(snap, surface, xyz, feats, note, self._version, taken_at, dict(out))
                self._failed = None
        return out

    def status(self) -> Dict[str, object]:
        """What the engine holds now (for logs and diagnostics): the answering snapshot's step,
        version and age (s), the newest offered step, whether a preparation is running, its surface
        (step, candidates), its projected features (basis width, MiB) or why there are none, and the
        last preparation failure ("" when the newest offered snapshot did not fail)."""
        with self._lock:
            prep, offered, failed = self._prepared, self._offered, self._failed
        feats = None if prep is None else prep.features
        return {
            "step": -1 if prep is None else prep.step,
            "version": 0 if prep is None else prep.version,
            "age_s": -1.0 if prep is None else prep.age_s(),
            "offered_step": -1 if offered is None else int(offered[0].step),
            "preparing": self._prepare_lock.locked(),
            "prepared_ms": 0.0 if prep is None else float(sum(prep.prepared_ms.values())),
            "surface_step": -1 if prep is None else prep.surface.step,
            "candidates": 0 if prep is None else len(prep.surface),
            "features_rank": 0 if feats is None else int(feats.basis.shape[0]),
            "features_mib": 0.0 if feats is None else feats.nbytes / 2**20,
            "features_note": "" if prep is None else prep.features_note,
            "error": failed[1] if failed is not None and offered is not None and failed[0] is offered[0] else "",
        }

    def _answering(self, timings: Dict[str, float]) -> Tuple[Optional[PreparedSnapshot], str]:
        """(the prepared snapshot to answer from, "") or (None, why there is none). Only before the
        first snapshot is prepared does this wait: it prepares the offered one (or waits for the
        preparation already running), and fills ``timings`` with what that took."""
        with self._lock:
            prep, offered, failed = self._prepared, self._offered, self._failed
        if prep is not None:
            return prep, ""
        if offered is None:
            return None, NO_MODEL_MESSAGE
        if failed is not None and failed[0] is offered[0]:
            return None, failed[1]
        try:
            timings.update(self.prepare())
        except SurfaceError as exc:
            return None, f"cannot extract surface points at step {int(offered[0].step)}: {exc}"
        prep = self.prepared
        return (prep, "") if prep is not None else (None, NO_MODEL_MESSAGE)

    # ------------------------------------------------------------------ queries
    def _check_request(self, text, negatives, threshold, max_points, max_grasps, world_to_target) -> str:
        cfg = self.cfg
        if isinstance(text, str) and not text.strip():
            return "empty query text: give a word or phrase naming what to find"
        problem = text_problem("query text", text, cfg.max_text_length, "query.max_text_length")
        if problem:
            return problem
        if len(negatives) > cfg.max_negatives:
            return (
                f"too many negative phrases ({len(negatives)}): at most {cfg.max_negatives} per request "
                "(query.max_negatives), besides the canonical ones"
            )
        for i, neg in enumerate(negatives):
            if isinstance(neg, str) and not neg.strip():
                return f"negative phrase {i} is empty: remove it or give a phrase"
            problem = text_problem(f"negative phrase {i}", neg, cfg.max_text_length, "query.max_text_length")
            if problem:
                return problem
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or not 0 <= threshold <= 1:
            return (
                f"threshold {excerpt(threshold) if isinstance(threshold, str) else threshold!r} is outside [0, 1]: "
                f"give a relevancy in [0, 1] (0 = default {cfg.threshold})"
            )
        if max_points < 0:
            return f"max_points {max_points} is negative: give a count (0 = default {cfg.max_points})"
        if max_grasps < 0:
            return f"max_grasps {max_grasps} is negative: give a count (0 = default {cfg.max_grasps})"
        if world_to_target is not None:
            try:
                check_pose(np.asarray(world_to_target, dtype=np.float64))
            except (FrameError, TypeError, ValueError) as exc:
                return f"world_to_target is not a rigid 4x4 transform: {exc}"
        return ""

    def query(
        self,
        text: str,
        negatives: Sequence[str] = (),
        threshold: float = 0.0,
        max_points: int = 0,
        max_grasps: int = 0,
        world_to_target: Optional[np.ndarray] = None,
    ) -> QueryResult:
        """Answer one query.

        Args:
            text: what to find (1..max_text_length characters, no control characters).
            negatives: at most ``query.max_negatives`` extra negative phrases (each like ``text``),
                added to the configured canonical phrases.
            threshold: keep points with relevancy >= this; 0 = the configured default.
            max_points: at most this many points (most relevant kept); 0 = the configured default;
                clamped to ``query.max_candidate_points``.
            max_grasps: at most this many grasps; 0 = the configured default; clamped to
                ``query.max_grasps_limit`` (the message says so).
            world_to_target: optional (4, 4) rigid transform from the world frame to the output frame.
        Returns:
            QueryResult. Never raises: a bad request, and any failure while answering (logged with
            its traceback), give success=False and a message; ``step`` is the current snapshot's
            step whenever there is one, refused requests included.
        """
        t0 = time.perf_counter()
        timings = {"surface": 0.0, "features": 0.0, "text": 0.0, "field": 0.0, "cluster": 0.0}
        step = self.current_step()
        negatives = list(negatives or ())
        error = self._check_request(text, negatives, threshold, max_points, max_grasps, world_to_target)
        if not error and self.stop.is_set():
            error = CLOSED_MESSAGE
        if error:
            return QueryResult(False, error, step=step, timings=self._total(timings, t0))
        try:
            return self._answer(text, negatives, threshold, max_points, max_grasps, world_to_target, timings, t0)
        except Cancelled:
            return QueryResult(False, CLOSED_MESSAGE, step=step, timings=self._total(timings, t0))
        except Exception as exc:  # a service must answer; the traceback goes to the log
            log.exception("query %s failed", excerpt(text))
            return QueryResult(
                False,
                f"query failed: {type(exc).__name__}: {exc}",
                step=step,
                timings=self._total(timings, t0),
            )

    def _answer(
        self,
        text: str,
        negatives: List[str],
        threshold: float,
        max_points: int,
        max_grasps: int,
        world_to_target: Optional[np.ndarray],
        timings: Dict[str, float],
        t0: float,
    ) -> QueryResult:
        cfg = self.cfg
        threshold = float(threshold) if threshold > 0 else cfg.threshold
        max_points = min(int(max_points) or cfg.max_points, cfg.max_candidate_points)
        capped = ""
        if int(max_grasps) > cfg.max_grasps_limit:
            capped = f"; max_grasps {int(max_grasps)} capped at {cfg.max_grasps_limit} (query.max_grasps_limit)"
        max_grasps = min(int(max_grasps) or cfg.max_grasps, cfg.max_grasps_limit)
        text = text.strip()
        negatives = [n.strip() for n in negatives]

        offered = self.snapshot
        if offered is not None and self.prepared is None and int(offered.clip_dim) == 0:
            # trained with teacher kind 'none': nothing to prepare for
            return QueryResult(False, NO_LANGUAGE_MESSAGE, step=int(offered.step), timings=self._total(timings, t0))
        prep, why = self._answering(timings)
        if prep is None:
            return QueryResult(False, why, step=self.current_step(), timings=self._total(timings, t0))
        snap, surface, step = prep.snapshot, prep.surface, prep.step
        version, age = prep.version, prep.age_s()
        if int(snap.clip_dim) == 0:  # trained with teacher kind 'none'
            return QueryResult(
                False,
                NO_LANGUAGE_MESSAGE,
                step=step,
                snapshot_version=version,
                snapshot_age_s=age,
                timings=self._total(timings, t0),
            )
        if len(surface) == 0:
            return QueryResult(
                False,
                (
                    f"no surface points yet at step {surface.step}: no opaque surface was seen by "
                    f"{cfg.min_views} keyframes (train longer, or lower query.min_views / "
                    "query.surface_min_accumulation, or raise query.surface_max_box)"
                ),
                step=step,
                surface_step=surface.step,
                snapshot_version=version,
                snapshot_age_s=age,
                timings=self._total(timings, t0),
            )

        # --- text
        tt = time.perf_counter()
        negs = negative_phrases(negatives, cfg.canonical_phrases, exclude=[text])
        if not negs:
            return QueryResult(
                False,
                (f"no negative phrase left: {excerpt(text)} is the only canonical phrase; add a negative phrase"),
                step=step,
                timings=self._total(timings, t0),
            )
        emb = self.texts.embed([text] + negs)  # (1 + M, D)
        timings["text"] = 1000 * (time.perf_counter() - tt)
        if emb.shape[1] != int(snap.clip_dim):
            return QueryResult(
                False,
                (
                    f"the text encoder gives {emb.shape[1]}-dim embeddings but the model's "
                    f"language field has {snap.clip_dim}: the teacher does not match the model"
                ),
                step=step,
                timings=self._total(timings, t0),
            )

        # --- scale search
        tf = time.perf_counter()
        search = scale_search(snap, prep.xyz, cfg.scales, emb, cfg.temperature, cfg.field_chunk_points, prep.features)
        scale, max_rel, scores = search.scale, search.max_relevancy, search.scores
        timings["field"] = 1000 * (time.perf_counter() - tf)

        above = np.flatnonzero(scores >= threshold)
        base = dict(
            step=step,
            scale=scale,
            max_relevancy=max_rel,
            surface_step=surface.step,
            num_candidates=len(surface),
            snapshot_version=version,
            snapshot_age_s=age,
        )
        if len(above) == 0:
            return QueryResult(
                False,
                (
                    f"nothing above threshold {format_relevancy(threshold, threshold)} for {excerpt(text)}: the best "
                    f"relevancy found is {format_relevancy(max_rel, threshold)} (scale {scale:.2f} m, "
                    f"{len(surface)} points); lower the threshold or rephrase"
                ),
                timings=self._total(timings, t0),
                **base,
            )
        order = above[np.argsort(-scores[above], kind="stable")]
        keep = order[:max_points]

        # --- grasps (on the most relevant points, up to the configured cap, against the whole surface)
        tc = time.perf_counter()
        focus = int(np.count_nonzero(scores[order] >= max_rel - cfg.grasp_focus * (max_rel - threshold)))
        gidx = order[: min(max(focus, 3 * cfg.dbscan_min_points), cfg.max_points)]
        plan = plan_grasps(
            surface.xyz[gidx],
            surface.normals[gidx],
            scores[gidx],
            surface.xyz,
            self.gripper,
            cfg.dbscan_eps,
            cfg.dbscan_min_points,
            max_grasps,
            tall_ratio=cfg.tall_ratio,
            point_spacing=cfg.voxel_size,
        )
        timings["cluster"] = 1000 * (time.perf_counter() - tc)

        pts = surface.xyz[keep]
        grasps = plan.grasps
        if world_to_target is not None:
            T = np.asarray(world_to_target, dtype=np.float64)
            pts = (pts.astype(np.float64) @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
            grasps = [g.transformed(T) for g in grasps]
        msg = (
            f"{len(keep)} of {len(above)} points above threshold {format_relevancy(threshold, threshold)} (max "
            f"relevancy {format_relevancy(max_rel, threshold)} at scale {scale:.2f} m, model step {step})"
        )
        msg += f"; {len(grasps)} grasp(s)" if grasps else f"; {plan.message}"
        msg += capped
        return QueryResult(
            True,
            msg,
            points=pts,
            colors=surface.rgb[keep],
            relevancy=scores[keep].astype(np.float32),
            grasps=grasps,
            grasp_points=len(gidx),
            timings=self._total(timings, t0),
            **base,
        )

    @staticmethod
    def _total(timings: Dict[str, float], t0: float) -> Dict[str, float]:
        timings["total"] = 1000 * (time.perf_counter() - t0)
        return timings
