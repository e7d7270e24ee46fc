"""Synthetic tabletop scenes: geometry that agrees with the rendered pixels, determinism, layout,
save/load, the ``lerf-ros scene`` command."""

import json

import numpy as np
import pytest

from lerf_ros.data.frame import Frame
from lerf_ros.data.synthetic.io import SCENE_FORMAT, SceneFormatError
from lerf_ros.data.synthetic.objects import VOCABULARY, normalize_phrase
from lerf_ros.data.synthetic.scene import load_scene, make_scene, scene_digest
from lerf_ros.data.synthetic.trajectory import look_at

W, H = 96, 72


@pytest.fixture(scope="module")
def scene():
    return make_scene(seed=5, width=W, height=H, n_frames=12)


def _project(frame: Frame, pts: np.ndarray):
    """World points -> (u, v) pixel indices, camera z, in-image mask (pixel centres at u + 0.5)."""
    w2c = np.linalg.inv(frame.c2w)
    pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    uvw = pc @ frame.K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.floor(uvw[:, 0] / uvw[:, 2]).astype(np.int64)
        v = np.floor(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
    ok = (z > 0.05) & (u >= 0) & (u < frame.width) & (v >= 0) & (v < frame.height)
    return u, v, z, ok


def _unproject(frame: Frame, mask: np.ndarray) -> np.ndarray:
    """World points of the pixels in ``mask`` from the depth map."""
    v, u = np.nonzero(mask)
    d = frame.depth[v, u].astype(np.float64)
    rays = np.stack([u + 0.5, v + 0.5, np.ones_like(d)], 1) @ np.linalg.inv(frame.K).T
    pc = rays * d[:, None]
    return pc @ frame.c2w[:3, :3].T + frame.c2w[:3, 3]


def _match_rates(scene, frames):
    """Per object: (matched, visible) counts of surface points whose pixel has the object's id,
    among points whose camera z equals the pixel's depth (visible points), and depth errors."""
    counts, errs = {}, []
    for frame in frames:
        for obj in scene.objects:
            u, v, z, ok = _project(frame, obj.surface_points)
            u, v, z = u[ok], v[ok], z[ok]
            d = frame.depth[v, u]
            visible = np.abs(d - z) < 0.01
            match = frame.instance[v[visible], u[visible]] == obj.instance_id
            c = counts.setdefault(obj.name, [0, 0])
            c[0] += int(match.sum())
            c[1] += int(visible.sum())
            errs.append(np.abs(d - z)[visible][match])
    total = sum(c[0] for c in counts.values()) / max(sum(c[1] for c in counts.values()), 1)
    return total, counts, np.concatenate(errs)


def test_surface_points_project_onto_matching_depth_and_instance(scene):
    """A world point on an object's surface, projected with the frame's pose and intrinsics, lands
    on a pixel whose depth equals its camera z (when visible) and whose instance id is the object's.
    (Thin objects lose points at their silhouettes at this resolution, hence rates, not all.)"""
    total, counts, _ = _match_rates(scene, scene.frames)
    assert sum(c[1] for c in counts.values()) > 5000  # the test really looked at many points
    assert total > 0.88, counts
    for obj in scene.objects:
        if obj.size[2] > 0.03:  # not flat: few silhouette pixels
            m, n = counts[obj.name]
            assert n > 100 and m / n > 0.93, (obj.name, m, n)


def test_projection_check_detects_a_wrong_convention(scene):
    """The same check on frames whose principal point is off by one pixel, or whose pose is in the
    OpenGL convention, fails: it can tell a correct convention from a wrong one."""
    shifted = [
        Frame(
            rgb=f.rgb,
            K=f.K + np.array([[0, 0, 1.0], [0, 0, 1.0], [0, 0, 0]]),
            c2w=f.c2w,
            depth=f.depth,
            instance=f.instance,
        )
        for f in scene.frames
    ]
    assert _match_rates(scene, shifted)[0] < 0.8
    flipped = [
        Frame(rgb=f.rgb, K=f.K, c2w=f.c2w @ np.diag([1.0, -1, -1, 1]), depth=f.depth, instance=f.instance)
        for f in scene.frames
    ]
    assert sum(c[0] for c in _match_rates(scene, flipped)[1].values()) == 0


def test_object_pixels_unproject_inside_their_boxes(scene):
    """Every pixel labelled with object k, lifted to 3D with its depth, lies inside k's box."""
    n = 0
    for frame in scene.frames:
        for obj in scene.objects:
            mask = frame.instance == obj.instance_id
            if not mask.any():
                continue
            pts = _unproject(frame, mask)
            assert obj.contains(pts, margin=1e-3).all(), (frame.index, obj.name)
            n += len(pts)
    assert n > 500


def test_half_pixel_convention_is_what_makes_geometry_agree(scene):
    """The unprojection check fails if rays go through pixel corners instead of centres."""
    frame = max(scene.frames, key=lambda f: (f.instance > 0).sum())
    shifted = Frame(
        rgb=frame.rgb,
        K=frame.K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]),
        c2w=frame.c2w,
        depth=frame.depth,
        instance=frame.instance,
    )
    worst = 0.0
    for obj in scene.objects:
        mask = frame.instance == obj.instance_id
        if mask.any():
            worst = max(worst, float((~obj.contains(_unproject(shifted, mask), margin=1e-3)).mean()))
    assert worst > 0.0


def test_table_pixels_lie_on_the_table_plane(scene):
    frame = scene.frames[0]
    pts = _unproject(frame, (frame.instance == 0) & (frame.depth > 0))
    on_table = (np.abs(pts[:, 0]) < scene.table_size[0] / 2 - 0.01) & (
        np.abs(pts[:, 1]) < scene.table_size[1] / 2 - 0.01
    )
    top = pts[on_table & (pts[:, 2] > -0.1)]
    assert len(top) > 100
    np.testing.assert_allclose(top[:, 2], scene.table_height, atol=2e-3)


def test_frames_are_valid_and_trajectory_is_robot_like(scene):
    assert len(scene) == 12
    stamps = [f.stamp for f in scene]
    assert stamps[0] > 0 and np.all(np.diff(stamps) > 0)
    for f in scene:
        f.validate()
        assert f.rgb.shape == (H, W, 3) and f.depth.dtype == np.float32 and f.instance.dtype == np.int32
        assert (f.instance > 0).any(), "every view sees at least one object"
    segs = [f.meta["segment"] for f in scene]
    assert segs.count("orbit") == 9 and segs.count("close") == 3
    heights = np.array([f.c2w[2, 3] for f in scene if f.meta["segment"] == "orbit"])
    assert heights.max() - heights.min() > 0.1  # height varies
    orbit_d = np.mean([np.median(f.depth[f.instance > 0]) for f in scene if f.meta["segment"] == "orbit"])
    close_d = np.mean([np.median(f.depth[f.instance > 0]) for f in scene if f.meta["segment"] == "close"])
    assert close_d < 0.6 * orbit_d  # the wrist pass is close to the objects
    # cameras look down at the table: the optical axis (+z column) points below the horizon
    assert all(f.c2w[2, 2] < 0 for f in scene)


def test_deterministic_for_a_seed():
    a = make_scene(seed=11, width=32, height=24, n_frames=4)
    b = make_scene(seed=11, width=32, height=24, n_frames=4)
    c = make_scene(seed=12, width=32, height=24, n_frames=4)
    assert scene_digest(a) == scene_digest(b)
    assert [o.name for o in a.objects] == [o.name for o in b.objects]
    np.testing.assert_array_equal(a.objects[0].surface_points, b.objects[0].surface_points)
    assert scene_digest(a) != scene_digest(c)


def test_layout_of_a_seed_does_not_change():
    """A saved scene stores only the seed of its geometry and rebuilds it on load (``render_view``),
    so the objects a seed draws, their places and turns are part of the file format: pinned here."""
    s = make_scene(seed=7, width=8, height=8, n_frames=1, n_surface_points=16)
    expect = [
        ("remote control", (-0.4485, -0.0720, 0.0109), -2.0772),
        ("pear", (0.4693, 0.2938, 0.0618), -1.6966),
        ("teapot", (0.3027, 0.1074, 0.0669), 2.9195),
        ("stapler", (-0.1628, -0.2600, 0.0204), -2.5032),
        ("scissors", (-0.4538, 0.1959, 0.0040), 1.0915),
        ("banana", (0.2482, -0.1030, 0.0177), -1.6641),
        ("tennis ball", (0.4831, -0.1536, 0.0336), -1.0391),
    ]
    assert [o.class_name for o in s.objects] == [e[0] for e in expect]
    np.testing.assert_allclose([o.center for o in s.objects], [e[1] for e in expect], atol=1e-4)
    np.testing.assert_allclose([o.yaw for o in s.objects], [e[2] for e in expect], atol=1e-4)


@pytest.mark.parametrize("seed", range(12))
def test_layout_has_no_overlap_and_stays_on_the_table(seed):
    s = make_scene(seed=seed, width=8, height=8, n_frames=1, n_surface_points=400)
    assert 5 <= len(s.objects) <= 10
    assert len({o.class_name for o in s.objects}) == len(s.objects)
    for o in s.objects:
        fp = o.footprint()
        assert np.all(np.abs(fp[:, 0]) <= s.table_size[0] / 2) and np.all(np.abs(fp[:, 1]) <= s.table_size[1] / 2)
        assert abs(o.center[2] - o.size[2] / 2 - s.table_height) < 1e-9  # resting on the table
        assert o.contains(o.surface_points, margin=1e-6).all()
        for other in s.objects:
            if other is not o:
                assert not other.contains(o.surface_points, margin=0.005).any(), (o.name, other.name)


def test_vocabulary_and_queries(scene):
    assert len(VOCABULARY) >= 20
    phrases = [normalize_phrase(p) for c in VOCABULARY for p in c.phrases()]
    assert len(phrases) == len(set(phrases)), "a phrase names two classes"
    present, absent = set(scene.present_classes()), set(scene.absent_classes())
    assert not present & absent and present | absent == set(scene.class_names())
    obj = scene.objects[0]
    assert scene.object_by_name(f"  The {obj.synonyms[0].upper()} ") is obj
    with pytest.raises(KeyError, match="no object"):
        scene.object_by_name(sorted(absent)[0])
    assert scene.instance_classes()[0] == "background"


def test_save_load_round_trip(scene, tmp_path):
    out = scene.save(tmp_path / "s")
    from PIL import Image

    with Image.open(out / "preview.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200
    doc = json.loads((out / "scene.json").read_text())
    assert doc["format"] == SCENE_FORMAT == "lerf_ros.synthetic_scene/1"  # scenes saved earlier stay loadable
    assert set(doc) == {"format", "conventions", "params", "table", "vocabulary", "objects", "frames"}
    back = load_scene(out)
    assert scene_digest(back) == scene_digest(scene)
    for a, b in zip(scene.frames, back.frames):
        np.testing.assert_array_equal(a.K, b.K)
        assert a.stamp == b.stamp and a.frame_id == b.frame_id
    for a, b in zip(scene.objects, back.objects):
        assert (a.name, a.synonyms, a.instance_id) == (b.name, b.synonyms, b.instance_id)
        np.testing.assert_array_equal(a.surface_points, b.surface_points)
        np.testing.assert_array_equal(a.rotation, b.rotation)
    # a loaded scene rebuilds its geometry from the seed and renders the same pixels
    rgb, depth, inst = back.render_view(back.frames[3].c2w)
    np.testing.assert_array_equal(rgb, scene.frames[3].rgb)
    np.testing.assert_array_equal(inst, scene.frames[3].instance)


def test_render_view_of_a_new_pose(scene):
    """Looking straight at an object's highest surface point from above puts it at the image centre
    at the expected depth (the intrinsics follow the requested size)."""
    for obj in scene.objects:
        top = obj.surface_points[np.argmax(obj.surface_points[:, 2])]
        eye = top + np.array([0.03, -0.04, 0.35])
        rgb, depth, inst = scene.render_view(look_at(eye, top), width=41, height=31)
        assert rgb.shape == (31, 41, 3)
        assert inst[15, 20] == obj.instance_id, obj.name
        assert abs(depth[15, 20] - np.linalg.norm(eye - top)) < 0.01, obj.name


def test_load_errors_name_the_file(tmp_path, scene):
    with pytest.raises(SceneFormatError, match="scene.json"):
        load_scene(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scene.json").write_text("{not json")
    with pytest.raises(SceneFormatError, match=r"bad/scene.json: cannot parse JSON"):
        load_scene(bad)
    out = scene.save(tmp_path / "s2", preview=False)
    (out / "frames" / "000004.npz").unlink()
    with pytest.raises(SceneFormatError, match=r"000004.npz: missing"):
        load_scene(out)
    doc = json.loads((out / "scene.json").read_text())
    doc["format"] = "something else"
    (out / "scene.json").write_text(json.dumps(doc))
    with pytest.raises(SceneFormatError, match="not a synthetic scene file"):
        load_scene(out)


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_objects"):
        make_scene(seed=0, n_objects=0, width=8, height=8, n_frames=1)
    with pytest.raises(ValueError, match="image size"):
        make_scene(seed=0, width=4, height=4)


def test_scene_command_and_open_source(tmp_path, capsys):
    from lerf_ros.cli import main
    from lerf_ros.data.sources import SourceError, open_source

    out = tmp_path / "cmd"
    assert main(["scene", "--seed", "3", "--out", str(out), "--width", "32", "--height", "24", "--frames", "4"]) == 0
    text = capsys.readouterr().out
    assert "render" in text and "absent classes" in text
    assert (out / "scene.json").is_file() and (out / "preview.png").is_file()
    src = open_source(out)
    assert src.kind == "synthetic" and len(src) == 4 and src.scene.seed == 3
    gen = open_source("synthetic:seed=3,width=32,height=24,frames=4")
    assert scene_digest(gen.scene) == scene_digest(src.scene)
    with pytest.raises(SourceError, match="unknown key"):
        open_source("synthetic:colour=3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: not a posed-frame source"):
        open_source(tmp_path / "empty")
