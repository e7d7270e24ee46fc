"""``lerf-ros scene``: render a synthetic tabletop scene with ground truth to a folder.

Real-camera conditions (``--distortion``, ``--pose-noise``, ``--pose-drift``, ``--late-correction``,
``--exposure``, ``--white-balance``; see :mod:`lerf_ros.data.synthetic.conditions`) change what the
frames show and report, seeded from ``--seed``, while the ground truth stays clean; all are off by
default, and then the folder is exactly the clean scene's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import List


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="scene seed (objects, layout, trajectory, conditions)")
    parser.add_argument("--out", required=True, help="output folder (created; existing scene files are replaced)")
    parser.add_argument("--width", type=int, default=160, help="image width in pixels")
    parser.add_argument("--height", type=int, default=120, help="image height in pixels")
    parser.add_argument("--frames", type=int, default=60, help="number of views")
    parser.add_argument("--objects", type=int, default=None, help="objects on the table (default: 5..10 from the seed)")
    parser.add_argument("--no-shadows", action="store_true", help="skip shadow rays")
    parser.add_argument(
        "--hfov", type=float, default=60.0, help="horizontal field of view of the pinhole camera, degrees"
    )
    parser.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="KIND:NAME@FRAME[=X,Y[,YAW]]",
        help="a scripted change (repeatable): remove:mug@30, move:mug@30[=X,Y[,YAW_DEG]], add:banana@45[=X,Y]; "
        "FRAME is the first frame showing the new state",
    )
    parser.add_argument(
        "--cycles", type=int, default=1, help="passes of the camera trajectory (--frames each; default 1)"
    )
    g = parser.add_argument_group("real-camera conditions (the ground truth stays clean; all off by default)")
    g.add_argument(
        "--distortion",
        metavar="MODEL[:C1,C2,...]",
        default=None,
        help="raw images through a lens: plumb_bob, rational_polynomial or equidistant, with its default "
        "coefficients or the given ones in ROS D order; written into scene.json and published by "
        "lerf-ros replay as camera_info D",
    )
    g.add_argument(
        "--pose-noise",
        metavar="METRES,DEGREES",
        default=None,
        help="per-frame pose noise: standard deviation per axis of the translation (m) and of the rotation (deg), "
        "e.g. 0.02,1.0",
    )
    g.add_argument(
        "--pose-drift",
        metavar="METRES[,DEGREES]",
        default=None,
        help="smooth drift reached at the last frame: translation (m) and optional yaw (deg), e.g. 0.05",
    )
    g.add_argument(
        "--late-correction",
        action="store_true",
        help="a loop closure at the end: write pose_corrections.json, the poses without the drift (needs --pose-drift)",
    )
    g.add_argument(
        "--exposure", type=float, default=0.0, metavar="STOPS", help="per-frame exposure gain within +-STOPS, e.g. 1"
    )
    g.add_argument(
        "--white-balance",
        type=float,
        default=0.0,
        metavar="STOPS",
        help="per-frame red and blue gains within +-STOPS, e.g. 0.2",
    )
    parser.add_argument(
        "--transforms",
        action="store_true",
        help="also write a nerfstudio transforms.json folder (OUT/transforms; the lens as OPENCV or OPENCV_FISHEYE)",
    )


def _numbers(option: str, text: str, count: List[int]) -> List[float]:
    """Comma-separated finite numbers >= 0, as many as one of ``count``; ValueError naming the option."""
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} '{text}': expected numbers separated by commas") from None
    if len(vals) not in count:
        want = " or ".join(str(c) for c in count)
        raise ValueError(f"{option} '{text}': expected {want} numbers, got {len(vals)}")
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise ValueError(f"{option} '{text}': values must be finite and >= 0")
    return vals


def conditions_from_args(args: argparse.Namespace):
    """The :class:`~lerf_ros.data.synthetic.conditions.Conditions` the options ask for (ValueError
    naming the option for a bad value)."""
    from lerf_ros.data.synthetic.conditions import Conditions, parse_distortion

    kw = {}
    if args.distortion:
        kw["distortion"] = parse_distortion(args.distortion)
    if args.pose_noise:
        kw["pose_noise_m"], kw["pose_noise_deg"] = _numbers("--pose-noise", args.pose_noise, [2])
    if args.pose_drift:
        vals = _numbers("--pose-drift", args.pose_drift, [1, 2])
        kw["pose_drift_m"] = vals[0]
        kw["pose_drift_deg"] = vals[1] if len(vals) > 1 else 0.0
    if args.late_correction:
        kw["late_correction"] = True
    kw["exposure_stops"] = args.exposure
    kw["white_balance_stops"] = args.white_balance
    return Conditions(**kw)


def _describe(scene) -> List[str]:
    """Lines saying what each active condition did to the frames."""
    import numpy as np

    from lerf_ros.geometry.poses import pose_distance

    c = scene.conditions
    if c is None or not c.active:
        return []
    lines = []
    if c.lens is not None:
        coeffs = " ".join(f"{k}={v:g}" for k, v in c.lens.as_dict().items())
        shift = c.lens.max_displacement_px(scene.K, scene.params["width"], scene.params["height"])
        lines.append(f"  lens {c.lens.model} ({coeffs}): rays move up to {shift:.1f} px if it is ignored")
    if c.poses:
        dt, da = pose_distance(np.stack([f.c2w for f in scene.frames]), scene.ground_truth_poses)
        lines.append(
            f"  poses: error against the ground truth mean {100 * dt.mean():.1f} cm / {np.degrees(da).mean():.2f} deg, "
            f"max {100 * dt.max():.1f} cm / {np.degrees(da).max():.2f} deg"
        )
    if scene.corrected_poses is not None:
        dt, da = pose_distance(scene.corrected_poses, scene.ground_truth_poses)
        lines.append(
            f"  late correction (available after stamp {scene.frames[-1].stamp:.2f}): error mean "
            f"{100 * dt.mean():.1f} cm / {np.degrees(da).mean():.2f} deg"
        )
    if scene.gains is not None:
        stops = np.log2(scene.gains)
        lines.append(f"  colour gains: {stops.min():+.2f} to {stops.max():+.2f} stops over frames and channels")
    return lines


def run(args: argparse.Namespace) -> int:
    from lerf_ros.data.synthetic.io import GROUND_TRUTH_POSES_FILE, POSE_CORRECTIONS_FILE, PREVIEW_FILE, SCENE_FILE
    from lerf_ros.data.synthetic.scene import make_scene

    t0 = time.perf_counter()
    try:
        conditions = conditions_from_args(args)
        if args.transforms and conditions.lens is not None and conditions.lens.model == "rational_polynomial":
            raise ValueError(
                "--transforms: transforms.json has no form of the rational_polynomial lens (OPENCV holds "
                "k1 k2 k3 p1 p2, OPENCV_FISHEYE k1..k4); the scene folder and lerf-ros replay carry it"
            )
        kwargs = dict(
            seed=args.seed,
            n_objects=args.objects,
            width=args.width,
            height=args.height,
            n_frames=args.frames,
            hfov_deg=args.hfov,
            shadows=not args.no_shadows,
        )
        if args.event or args.cycles != 1:
            if conditions.active:
                raise ValueError(
                    "--event/--cycles (a changing scene) cannot be combined with real-camera conditions yet: "
                    "their ground truth is rendered from the static geometry"
                )
            from lerf_ros.data.synthetic.events import make_changing_scene

            scene = make_changing_scene(events=args.event, cycles=args.cycles, **kwargs)
        else:
            scene = make_scene(conditions=conditions, **kwargs)
    except ValueError as e:
        print(f"lerf-ros scene: {e}", file=sys.stderr)
        return 2
    t1 = time.perf_counter()
    out = scene.save(args.out)
    written = [str(out / SCENE_FILE), str(out / PREVIEW_FILE)]
    for name in (GROUND_TRUTH_POSES_FILE, POSE_CORRECTIONS_FILE):
        if (out / name).is_file():
            written.append(str(out / name))
    if args.transforms:
        from lerf_ros.data.transforms_json import write_transforms

        written.append(str(write_transforms(out / "transforms", scene.frames)))
    t2 = time.perf_counter()
    print(
        f"synthetic scene seed {args.seed}: {len(scene.frames)} frames {args.width}x{args.height}, "
        f"{len(scene.objects)} objects (world z-up, metres, table top z = {scene.table_height})"
    )
    for o in scene.objects:
        print(
            f"  {o.instance_id:2d} {o.name:15s} centre ({o.center[0]:+.3f}, {o.center[1]:+.3f}, {o.center[2]:+.3f}) "
            f"size {o.size[0]:.3f} x {o.size[1]:.3f} x {o.size[2]:.3f} m  synonyms: {', '.join(o.synonyms)}"
        )
    print(f"  absent classes (negative queries): {', '.join(scene.absent_classes())}")
    for e in scene.params.get("events", []):
        where = f" -> centre ({e['center'][0]:+.3f}, {e['center'][1]:+.3f})" if "center" in e else ""
        print(f"  event at frame {e['frame']}: {e['kind']} {e['name']} (instance {e['instance_id']}){where}")
    cond_lines = _describe(scene)
    if cond_lines:
        print("real-camera conditions (frames as the camera delivers them; ground truth kept clean):")
        for line in cond_lines:
            print(line)
    print(
        f"timings: layout {scene.timings['layout_s']:.2f} s, render {scene.timings['render_s']:.2f} s, "
        f"total generate {t1 - t0:.2f} s, save {t2 - t1:.2f} s"
    )
    print(f"wrote {', '.join(written)} and {len(scene.frames)} frames under {out / 'frames'}")
    return 0
