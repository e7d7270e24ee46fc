"""A TF buffer for a whole recording: static links and time series of dynamic links, looked up at
many stamps at once (vectorised), each dynamic link interpolated between the bracketing samples
(linear translation, slerp rotation) or taken from the nearest one within a tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from lerf_ros.geometry.poses import invert_pose, make_pose, quat_slerp


@dataclass
class _Link:
    parent: str
    stamps: List[float] = field(default_factory=list)
    t: List[Sequence[float]] = field(default_factory=list)
    q: List[Sequence[float]] = field(default_factory=list)
    static: bool = False


class TfBuffer:
    """Transforms of a whole recording: static links and time series of dynamic links.

    ``lookup(target, source, stamps)`` gives ``T_target_source`` (maps points in ``source`` to
    ``target``) at each stamp, for any two frames of the same tree.

    Args:
        tolerance: a dynamic sample within this many seconds of the stamp is used directly.
        max_interpolation_gap: bracketing samples at most this far apart are interpolated.
    """

    def __init__(self, tolerance: float = 0.05, max_interpolation_gap: float = 0.5):
        self.tolerance = float(tolerance)
        self.max_interpolation_gap = float(max_interpolation_gap)
        self.links: Dict[str, _Link] = {}
        self._arrays: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(
        self,
        parent: str,
        child: str,
        stamp: float,
        translation: Sequence[float],
        rotation_xyzw: Sequence[float],
        static: bool = False,
    ) -> None:
        """Record ``T_parent_child`` at ``stamp`` (seconds)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform '{parent}' -> '{child}'")
        link = self.links.get(child)
        if link is None or link.parent != parent or link.static != static:
            link = self.links[child] = _Link(parent, static=static)
        link.stamps.append(float(stamp))
        link.t.append(translation)
        link.q.append(rotation_xyzw)
        self._arrays.pop(child, None)

    def frames(self) -> List[str]:
        names = set(self.links)
        names.update(link.parent for link in self.links.values())
        return sorted(names)

    def _chain(self, frame: str) -> List[str]:
        chain = [frame]
        while chain[-1] in self.links:
            nxt = self.links[chain[-1]].parent
            if nxt in chain:
                raise ValueError(f"TF loop through '{nxt}'")
            chain.append(nxt)
        return chain

    def root(self, frame: str) -> str:
        return self._chain(frame.lstrip("/"))[-1]

    def _link_at(self, child: str, stamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) T_parent_child at the stamps and (N,) validity."""
        link = self.links[child]
        if child not in self._arrays:
            order = np.argsort(link.stamps, kind="stable")
            self._arrays[child] = (
                np.asarray(link.stamps)[order],
                np.asarray(link.t, float)[order],
                np.asarray(link.q, float)[order],
            )
        ts, tr, q = self._arrays[child]
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        n = len(stamps)
        if link.static:
            return np.broadcast_to(make_pose(tr[-1], q[-1]), (n, 4, 4)).copy(), np.ones(n, bool)
        hi = np.clip(np.searchsorted(ts, stamps), 1, max(len(ts) - 1, 1))
        lo = hi - 1
        if len(ts) == 1:
            lo = hi = np.zeros(n, int)
        t0, t1 = ts[lo], ts[hi]
        gap = t1 - t0
        a = np.where(gap > 0, np.clip((stamps - t0) / np.where(gap > 0, gap, 1), 0, 1), 0.0)
        bracketed = (stamps >= t0) & (stamps <= t1) & (gap <= self.max_interpolation_gap)
        nearest = np.minimum(np.abs(stamps - t0), np.abs(stamps - t1)) <= self.tolerance
        valid = bracketed | nearest
        a = np.where(bracketed, a, np.where(np.abs(stamps - t0) <= np.abs(stamps - t1), 0.0, 1.0))
        trans = tr[lo] + a[:, None] * (tr[hi] - tr[lo])
        rot = quat_slerp(q[lo], q[hi], a)
        return make_pose(trans, rot), valid

    def lookup(self, target: str, source: str, stamps: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
        """(N, 4, 4) ``T_target_source`` at each stamp and (N,) bool: all links available there.
        Raises ValueError when the frames are not connected."""
        target, source = target.lstrip("/"), source.lstrip("/")
        stamps = np.asarray(stamps, np.float64).reshape(-1)
        n = len(stamps)
        ca, cb = self._chain(source), self._chain(target)
        if ca[-1] != cb[-1]:
            raise ValueError(
                f"TF frames '{target}' and '{source}' are not connected "
                f"(roots '{cb[-1]}' and '{ca[-1]}'; known frames: {', '.join(self.frames())})"
            )
        common = next(f for f in ca if f in cb)

        def to_common(chain: List[str]) -> Tuple[np.ndarray, np.ndarray]:
            T = np.tile(np.eye(4), (n, 1, 1))
            ok = np.ones(n, bool)
            for f in chain[: chain.index(common)]:
                L, v = self._link_at(f, stamps)
                T = L @ T
                ok &= v
            return T, ok

        Ts, vs = to_common(ca)
        Tt, vt = to_common(cb)
        return invert_pose(Tt) @ Ts, vs & vt
