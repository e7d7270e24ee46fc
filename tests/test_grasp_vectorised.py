"""The grasp planner's array code against straightforward loops (tests/grasp_reference.py and
``gripper_collisions``): the same candidates, contact measures and collision counts."""

from __future__ import annotations

import numpy as np
import pytest
from grasp_reference import _contact_cos, _outline_cos, reference_candidates
from grasp_shapes import box_surface

from lerf_ros.query.grasp import (
    GripperModel,
    _contact_cos_runs,
    _grasp_candidates,
    _outline_cos_runs,
    _unit,
    batch_collisions,
    gripper_collisions,
    support_height,
)

GRIPPER = GripperModel()


def cylinder(center, radius, height, spacing, wall=0.0):
    """A can (closed top) or, with ``wall`` > 0, a bowl-like open cup: outer side, inner side, rim."""
    n_around = max(12, int(2 * np.pi * radius / spacing))
    th = np.linspace(0, 2 * np.pi, n_around, endpoint=False)
    zs = np.arange(0.0, height + 1e-9, spacing)
    T, Z = np.meshgrid(th, zs, indexing="ij")
    ring = np.stack([np.cos(T.ravel()), np.sin(T.ravel()), np.zeros(T.size)], axis=1)
    pts = [ring * radius + np.c_[np.zeros((T.size, 2)), Z.ravel()]]
    nrm = [ring]
    if wall > 0:
        pts.append(ring * (radius - wall) + np.c_[np.zeros((T.size, 2)), Z.ravel()])
        nrm.append(-ring)
    else:
        rr = np.arange(0.0, radius, spacing)
        R_, TH = np.meshgrid(rr, th, indexing="ij")
        cap = np.stack([R_.ravel() * np.cos(TH.ravel()), R_.ravel() * np.sin(TH.ravel()), np.full(R_.size, height)], 1)
        pts.append(cap)
        nrm.append(np.tile([0, 0, 1.0], (len(cap), 1)))
    return np.concatenate(pts) + center, np.concatenate(nrm)


def table(spacing, extent=0.3):
    u = np.arange(-extent, extent + 1e-9, spacing)
    X, Y = np.meshgrid(u, u, indexing="ij")
    return np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], axis=1)


def scenes():
    """(name, object points, normals, scene points, spacing): objects alone and with neighbours."""
    out = []
    for spacing in (0.005, 0.01):
        rng = np.random.default_rng(int(spacing * 1000))
        cases = {
            "box": box_surface(np.array([0.02, -0.01, 0.025]), (0.04, 0.10, 0.05), 0.37, spacing),
            "tall box": box_surface(np.array([0.0, 0.0, 0.09]), (0.05, 0.06, 0.18), 1.1, spacing),
            "flat box": box_surface(np.array([0.0, 0.0, 0.006]), (0.12, 0.07, 0.012), 0.2, spacing),
            "wide box": box_surface(np.array([0.0, 0.0, 0.03]), (0.15, 0.12, 0.06), 0.5, spacing),
            "can": cylinder(np.array([0.01, 0.02, 0.0]), 0.033, 0.12, spacing),
            "bowl": cylinder(np.array([0.0, 0.0, 0.0]), 0.07, 0.05, spacing, wall=0.006),
            # two walls with a gap a finger fits in, as one object: runs merged when they fit together
            "two walls": tuple(
                np.concatenate(z)
                for z in zip(
                    box_surface(np.array([0.0, -0.02, 0.02]), (0.08, 0.01, 0.04), 0.3, spacing),
                    box_surface(np.array([0.0, 0.02, 0.02]), (0.08, 0.01, 0.04), 0.3, spacing),
                )
            ),
        }
        for name, (P, N) in cases.items():
            # Sampling noise, as on a field's surface, and a neighbour close by.
            P = P + rng.normal(0, 0.1 * spacing, P.shape)
            nb, _ = box_surface(np.array([0.0, 0.09, 0.03]), (0.04, 0.04, 0.06), 0.0, spacing)
            out.append((f"{name} {spacing}", P, N, np.concatenate([P, table(spacing)]), spacing))
            out.append((f"{name} {spacing} + neighbour", P, N, np.concatenate([P, nb, table(spacing)]), spacing))
    return out


@pytest.mark.parametrize("case", scenes(), ids=lambda c: c[0])
def test_candidates_match_the_straightforward_loops(case):
    _, P, N, S, spacing = case
    rng = np.random.default_rng(7)
    r = rng.uniform(0.5, 1.0, len(P))
    up = np.array([0.0, 0.0, 1.0])
    support = support_height(P, S, up, spacing)
    got = _grasp_candidates(P, N, r, S, up, GRIPPER, 1.5, spacing, support)
    ref = reference_candidates(P, N, r, S, up, GRIPPER, 1.5, spacing, support)
    assert len(ref) > 0
    assert len(got) == len(ref)
    np.testing.assert_allclose(got.poses, np.stack([c[0] for c in ref]), atol=1e-9)
    np.testing.assert_allclose(got.widths, [c[1] for c in ref], atol=1e-9)
    assert list(got.kinds) == [c[2] for c in ref]
    np.testing.assert_allclose(got.quality, [c[3] for c in ref], atol=1e-9)


def test_outline_and_contact_measures_match_one_run_at_a_time():
    rng = np.random.default_rng(3)
    xs_all, ys_all, u_all, starts, stops, ref_outline = [], [], [], [], [], []
    rid, py, cos_y, deep, lo_end, hi_end, ref_lo, ref_hi = [], [], [], [], [], [], [], []
    n = 0
    for k in range(60):
        m = int(rng.integers(1, 30))
        xs = rng.uniform(-0.02, 0.02, m)
        ys = np.sort(rng.uniform(-0.05, 0.05, m))
        if k % 5 == 0:
            xs = np.abs(xs) + 0.001  # one half empty
        u = float(rng.uniform(-0.005, 0.005))
        xs_all.append(xs)
        ys_all.append(ys)
        u_all.append(np.full(m, u))
        starts.append(n)
        stops.append(n + m)
        n += m
        ref_outline.append(_outline_cos(xs, ys, u, 0.005))
        # contact measure: points of run k along the closing axis, their normals' cosines and depths
        q = int(rng.integers(0, 25))
        yq, cq, dq = rng.uniform(-0.04, 0.04, q), rng.uniform(0, 1, q), rng.uniform(0, 0.03, q)
        ylo, yhi = float(rng.uniform(-0.04, -0.02)), float(rng.uniform(0.02, 0.04))
        rid.append(np.full(q, k))
        py.append(yq)
        cos_y.append(cq)
        deep.append(dq >= 0.01)
        lo_end.append(ylo)
        hi_end.append(yhi)
        nq = np.tile([0.0, 1.0, 0.0], (q, 1)) * cq[:, None]
        ref_lo.append(_contact_cos(yq, dq, nq, np.array([0.0, 1.0, 0.0]), ylo, 0.008, 0.01))
        ref_hi.append(_contact_cos(yq, dq, nq, np.array([0.0, 1.0, 0.0]), yhi, 0.008, 0.01))
    got = _outline_cos_runs(
        np.concatenate(xs_all), np.concatenate(ys_all), np.concatenate(u_all), np.array(stops) - np.array(starts), 0.005
    )
    np.testing.assert_allclose(got, ref_outline, atol=1e-12)
    args = (np.concatenate(rid), 60, np.concatenate(py), np.concatenate(cos_y), np.concatenate(deep))
    np.testing.assert_allclose(_contact_cos_runs(*args, np.array(lo_end), 0.008), ref_lo, atol=1e-12)
    np.testing.assert_allclose(_contact_cos_runs(*args, np.array(hi_end), 0.008), ref_hi, atol=1e-12)


@pytest.mark.parametrize("pad", [0.0, 0.004])
def test_batch_collisions_count_what_each_pose_alone_counts(pad):
    rng = np.random.default_rng(11)
    scene = rng.uniform(-0.2, 0.2, (800, 3))
    poses, widths = [], []
    for _ in range(150):
        a = _unit(rng.normal(size=3))
        y = _unit(np.cross(a, rng.normal(size=3)))
        pose = np.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = np.cross(y, a), y, a, rng.uniform(-0.3, 0.3, 3)
        poses.append(pose)
        widths.append(rng.uniform(0.01, 0.08))
    poses, widths = np.stack(poses), np.array(widths)
    got = batch_collisions(poses, widths, GRIPPER, scene, pad)
    ref = [gripper_collisions(p, w, GRIPPER, scene, pad) for p, w in zip(poses, widths)]
    assert np.count_nonzero(ref) > 30 and np.count_nonzero(np.array(ref) == 0) > 30
    np.testing.assert_array_equal(got, ref)
    # Poses far from every point: nothing to count.
    far = poses.copy()
    far[:, :3, 3] += 5.0
    assert not batch_collisions(far, widths, GRIPPER, scene, pad).any()
