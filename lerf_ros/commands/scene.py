"""``lerf-ros scene``: render a synthetic tabletop scene with ground truth to a folder."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="scene seed (objects, layout, trajectory)")
    parser.add_argument("--out", required=True, help="output folder (created; existing scene files are replaced)")
    parser.add_argument("--width", type=int, default=160, help="image width in pixels")
    parser.add_argument("--height", type=int, default=120, help="image height in pixels")
    parser.add_argument("--frames", type=int, default=60, help="number of views")
    parser.add_argument("--objects", type=int, default=None, help="objects on the table (default: 5..10 from the seed)")
    parser.add_argument("--no-shadows", action="store_true", help="skip shadow rays")
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


def run(args: argparse.Namespace) -> int:
    from lerf_ros.data.synthetic.io import PREVIEW_FILE, SCENE_FILE
    from lerf_ros.data.synthetic.scene import make_scene

    t0 = time.perf_counter()
    kwargs = dict(
        seed=args.seed,
        n_objects=args.objects,
        width=args.width,
        height=args.height,
        n_frames=args.frames,
        shadows=not args.no_shadows,
    )
    try:
        if args.event or args.cycles != 1:
            from lerf_ros.data.synthetic.events import make_changing_scene

            scene = make_changing_scene(events=args.event, cycles=args.cycles, **kwargs)
        else:
            scene = make_scene(**kwargs)
    except ValueError as e:
        print(f"lerf-ros scene: {e}", file=sys.stderr)
        return 2
    t1 = time.perf_counter()
    out = scene.save(args.out)
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
    print(
        f"timings: layout {scene.timings['layout_s']:.2f} s, render {scene.timings['render_s']:.2f} s, "
        f"total generate {t1 - t0:.2f} s, save {t2 - t1:.2f} s"
    )
    print(f"wrote {out / SCENE_FILE}, {out / PREVIEW_FILE} and {len(scene.frames)} frames under {out / 'frames'}")
    return 0
