"""``lerf-ros train``: train a LERF offline from any posed-frame source.

    lerf-ros train --scene DIR --preset tiny --steps 2000 [--out DIR] [--query "mug"]

Every 8th frame (index 0, 8, 16, ...) is held out for evaluation; the rest train. The run folder
gets the resolved configuration (``config.yaml``), periodic atomic checkpoints
(``checkpoints/step-NNNNNNN.ckpt``, the newest ``trainer.keep_checkpoints`` kept, plus
``checkpoints/final.ckpt``), held-out renders (``renders/view_III_rgb.png``: ground truth | render,
``_depth.png``, and ``_relevancy_<query>.png`` per ``--query``), and ``metrics.json``.

The teacher is the configured one (``teacher.kind``); with ``--teacher auto`` (the default) a
synthetic scene trains against its ground-truth teacher (its 2D semantics, not CLIP) and any
other source against OpenCLIP + DINO. ``--teacher none`` trains geometry and colour only (no
weights needed, no language field: to check a real capture before installing CLIP weights).

Progress: bars on a terminal; with ``--no-progress`` or when stderr is not a terminal (a log file),
log lines with counts, rate and ETA instead, every 10% of the work or every 10 s, whichever comes
first (``lerf_ros.mapping.progress``), for the teacher features and for training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Any, Dict, List

import numpy as np

from lerf_ros.commands import key_values

# PyTorch's worker threads sleep instead of spinning while they wait: on a CPU shared with other
# processes (ROS nodes, other jobs) spinning OpenMP threads slow training down many times over.
# Effective only if set before torch starts its thread pool, i.e. before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HOLDOUT_EVERY = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scene",
        required=True,
        help="posed-frame source: a synthetic scene folder or 'synthetic:seed=3,...', a transforms.json "
        "folder, or a rosbag2",
    )
    p.add_argument(
        "--preset", default="tiny", help="configuration preset: tiny, lerf-lite, lerf, lerf-big (default tiny)"
    )
    p.add_argument("--config", help="YAML configuration (its 'preset' key wins over --preset)")
    add_reader_arguments(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override with a dotted key, e.g. trainer.rays_per_batch=2048 (repeatable)",
    )
    p.add_argument("--steps", type=int, help="training steps (default: trainer.max_steps)")
    p.add_argument("--out", help="run folder (default: <output_dir>/train-<scene name>)")
    p.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="TEXT",
        help="text whose relevancy map is rendered for the held-out views (repeatable)",
    )
    p.add_argument(
        "--teacher",
        choices=("auto", "clip", "ground_truth", "none"),
        default="auto",
        help="teacher kind (auto: ground truth for synthetic scenes, else clip; none: geometry and colour only, "
        "no language field, no weights needed)",
    )
    p.add_argument("--device", help="'cpu', 'cuda' or 'auto' (default: the preset's)")
    p.add_argument(
        "--no-pose-refinement",
        action="store_true",
        help="trust the source's poses: learn no per-keyframe pose correction (trainer.pose_refinement=false)",
    )
    p.add_argument(
        "--no-appearance",
        action="store_true",
        help="no per-keyframe appearance embedding (model.appearance_dim=0)",
    )
    p.add_argument(
        "--eval-every", type=int, default=0, help="evaluate held-out PSNR every N steps (0: only at the end)"
    )
    p.add_argument("--max-renders", type=int, default=4, help="held-out views rendered to PNG")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: log lines with counts, rate and ETA instead (also when stderr is not a terminal)",
    )


READER_OPTIONS_HELP = (
    "option of the source's reader (repeatable). transforms.json: distortion=model|ignore, "
    "missing_images=skip|error, depth_unit_scale=M, frame_interval=S, frame_id=NAME, background=[r,g,b]; "
    "rosbag2: image_topic, camera_info_topic, depth_topic, pose_topic, world_frame, camera_frame, "
    "pose_child_frame, tf_topic, tf_static_topic, tolerance, max_interpolation_gap, use_projection_matrix; "
    "synthetic spec: width, height, n_frames, n_objects, seed"
)


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """``--reader-option KEY=VALUE``: every keyword of the source's reader (shared with replay)."""
    p.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE", help=READER_OPTIONS_HELP)


def reader_options(items: List[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` items -> keyword arguments for ``open_source`` (values parsed as YAML).
    Raises ValueError for an item without '='."""
    return key_values(items, "--reader-option")


def open_with_options(spec: str, items: List[str]):
    """``open_source(spec, **reader_options(items))``; an option the reader does not take is a
    ValueError naming it."""
    from lerf_ros.data.sources import open_source

    kwargs = reader_options(items)
    try:
        return open_source(spec, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{spec}: reader option not accepted ({exc}); known: {READER_OPTIONS_HELP}") from None


def _build_config(args: argparse.Namespace):
    from lerf_ros.config import ConfigError, LerfConfig, preset

    overrides = key_values(args.set, "--set", ConfigError)
    if args.device:
        overrides["device"] = args.device
    if args.no_pose_refinement:
        overrides["trainer.pose_refinement"] = False
    if args.no_appearance:
        overrides["model.appearance_dim"] = 0
    cfg = LerfConfig.load_yaml(args.config) if args.config else preset(args.preset)
    if overrides:
        cfg = cfg.override(overrides)
    return cfg, overrides


# ---------------------------------------------------------------------------------- images
_CMAP = np.array([[0.05, 0.03, 0.2], [0.3, 0.1, 0.55], [0.75, 0.2, 0.4], [0.98, 0.55, 0.1], [0.99, 0.95, 0.3]])


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> (H, W, 3) uint8 (dark blue -> purple -> red -> orange -> yellow)."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * (len(_CMAP) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_CMAP) - 2)
    f = (x - i)[..., None]
    rgb = _CMAP[i] * (1.0 - f) + _CMAP[i + 1] * f
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def depth_image(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Depth (H, W) metres -> colour image, near bright, on a fixed [lo, hi] range."""
    return colormap(1.0 - (depth - lo) / max(hi - lo, 1e-6))


def save_png(path: str, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(img).save(path)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "query"


# ---------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from lerf_ros.config import ConfigError
    from lerf_ros.data.frame import FrameError
    from lerf_ros.data.sources import SourceError
    from lerf_ros.mapping.session import Session
    from lerf_ros.teachers import make_teacher
    from lerf_ros.teachers.text import negative_phrases, relevancy

    def fail(msg: str) -> int:
        print(f"lerf-ros train: {msg}", file=sys.stderr)
        return 2

    try:
        cfg, overrides = _build_config(args)
        source = open_with_options(args.scene, args.reader_option)
        frames = list(source)
    except (ConfigError, SourceError, FrameError, OSError, ValueError) as exc:
        return fail(str(exc))
    if len(frames) < 2:
        return fail(f"{args.scene}: {len(frames)} frame(s); need at least 2 (every {HOLDOUT_EVERY}th is held out)")
    if args.steps is not None and args.steps < 0:
        return fail(f"--steps {args.steps}: must be >= 0")
    steps = cfg.trainer.max_steps if args.steps is None else args.steps

    # Teacher.
    kind = args.teacher
    if kind == "auto":
        kind = "ground_truth" if source.scene is not None else "clip"
    if kind != cfg.teacher.kind:
        cfg = cfg.override({"teacher.kind": kind})
    if kind == "none" and any(q.strip() for q in args.query):
        return fail("--query needs a language field: teacher 'none' trains geometry and colour only")
    try:
        teacher = make_teacher(cfg.teacher, scene=source.scene)
    except Exception as exc:  # missing weights, no scene for the ground-truth teacher, ...
        return fail(f"cannot build the {kind} teacher: {exc}")

    name = os.path.basename(os.path.normpath(str(args.scene))).replace(":", "-").replace(",", "_") or "scene"
    out_dir = args.out or os.path.join(cfg.output_dir, f"train-{name}")
    render_dir = os.path.join(out_dir, "renders")
    os.makedirs(render_dir, exist_ok=True)
    cfg = cfg.override({"output_dir": out_dir})
    cfg.save_yaml(os.path.join(out_dir, "config.yaml"))

    train_idx = [i for i in range(len(frames)) if i % HOLDOUT_EVERY != 0]
    eval_idx = [i for i in range(len(frames)) if i % HOLDOUT_EVERY == 0]
    session = Session(cfg, teacher, online=False, log=lambda level, text: print(text, flush=True))
    print(
        f"{source.kind} source {args.scene}: {len(frames)} frames {frames[0].width}x{frames[0].height}, "
        f"{len(train_idx)} train / {len(eval_idx)} held out; preset {cfg.preset} on {session.device}"
    )
    print(f"teacher: {teacher.description}")

    from tqdm import tqdm

    from lerf_ros.mapping.progress import ProgressLog

    bars = not args.no_progress and sys.stderr.isatty()
    t_feat = time.perf_counter()
    if session.has_language:
        feat_log = None if bars else ProgressLog("teacher features", len(train_idx), "frames")
        if feat_log is not None:
            feat_log.start(teacher.description)
        for n, i in enumerate(tqdm(train_idx, desc="teacher features", disable=not bars, leave=False), 1):
            session.add(frames[i])
            if feat_log is not None:
                feat_log.update(n)
        t_feat = time.perf_counter() - t_feat
        print(f"teacher features: {len(train_idx)} frames in {t_feat:.1f} s")
    else:
        for i in train_idx:
            session.add(frames[i])
        print(f"no teacher features (teacher 'none'): {len(train_idx)} frames stored")

    if args.resume and session.resume() is not None:
        print(f"resumed from {session.last_checkpoint} at step {session.step_count}")
    trainer = session.ensure_model()
    center, scale = session.bounds
    print(f"scene: centre {np.round(center, 3).tolist()} m, half-extent {scale:.3f} m")

    def evaluate() -> Dict[str, float]:
        ps, derr = [], []
        for i in eval_idx:
            f = frames[i]
            r = session.render_view(f.K, f.c2w, f.height, f.width)
            mse = float(((r["rgb"].cpu().numpy() - f.rgb / 255.0) ** 2).mean())
            ps.append(-10.0 * math.log10(max(mse, 1e-10)))
            if f.depth is not None:
                valid = np.isfinite(f.depth) & (f.depth > 0)
                derr.append(float(np.abs(r["depth"].cpu().numpy()[valid] - f.depth[valid]).mean()))
        res = {"psnr": float(np.mean(ps)), "psnr_per_view": ps}
        if derr:
            res["depth_mae_m"] = float(np.mean(derr))
        return res

    history: List[Dict[str, float]] = []
    t_train = 0.0
    psnr_ema = None
    every = cfg.trainer.checkpoint_every
    bar = tqdm(total=steps, initial=min(session.step_count, steps), desc="train", disable=not bars, dynamic_ncols=True)
    train_log = None
    if not bars and steps > session.step_count:
        train_log = ProgressLog("train", steps, "steps", initial=session.step_count)
        train_log.start()
    try:
        while session.step_count < steps:
            t0 = time.perf_counter()
            stats = session.step()
            t_train += time.perf_counter() - t0
            psnr_ema = stats["psnr"] if psnr_ema is None else 0.95 * psnr_ema + 0.05 * stats["psnr"]
            step = session.step_count
            bar.update(1)
            bar.set_postfix(
                {"rays/s": f"{trainer.rays_per_second:.0f}", "psnr": f"{psnr_ema:.2f}", "loss": f"{stats['loss']:.4f}"},
                refresh=False,
            )
            if train_log is not None:
                train_log.update(
                    step,
                    f"psnr {psnr_ema:.2f}  loss {stats['loss']:.4f}  rays/s {trainer.rays_per_second:.0f}",
                )
            if every and step % every == 0:
                session.save_checkpoint()
            if args.eval_every and step % args.eval_every == 0:
                ev = evaluate()
                history.append({"step": step, "train_seconds": t_train, "heldout_psnr": ev["psnr"]})
                bar.write(f"step {step}: held-out PSNR {ev['psnr']:.2f} dB after {t_train:.0f} s of training")
    except KeyboardInterrupt:
        bar.close()
        path = session.save_checkpoint()
        print(f"interrupted at step {session.step_count}; checkpoint {path}", file=sys.stderr)
        return 130
    bar.close()
    final = session.save_checkpoint(os.path.join(session.checkpoint_dir, "final.ckpt"))

    # Held-out evaluation and renders.
    ev = evaluate()
    print(
        f"held-out PSNR {ev['psnr']:.2f} dB over {len(eval_idx)} views"
        + (f", depth MAE {ev['depth_mae_m'] * 100:.1f} cm" if "depth_mae_m" in ev else "")
    )
    rel_info: Dict[str, Any] = {}
    text_emb = None
    if args.query:
        queries = [" ".join(q.split()) for q in args.query if q.strip()]
        negs = negative_phrases(canonical=cfg.query.canonical_phrases, exclude=queries)
        text_emb = (queries, teacher.encode_text(queries).float(), teacher.encode_text(negs).float(), negs)
    scales = list(cfg.query.scales)
    probe_scales = [scales[int(round(j))] for j in np.linspace(0, len(scales) - 1, min(5, len(scales)))]
    for i in eval_idx[: max(0, args.max_renders)]:
        f = frames[i]
        r = session.render_view(f.K, f.c2w, f.height, f.width)
        rgb = (r["rgb"].cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        save_png(os.path.join(render_dir, f"view_{i:03d}_rgb.png"), np.concatenate([f.rgb, rgb], axis=1))
        d = r["depth"].cpu().numpy()
        valid = f.depth[np.isfinite(f.depth) & (f.depth > 0)] if f.depth is not None else d.reshape(-1)
        lo, hi = float(np.percentile(valid, 1)), float(np.percentile(valid, 99))
        pane = [depth_image(f.depth, lo, hi)] if f.depth is not None else []
        save_png(
            os.path.join(render_dir, f"view_{i:03d}_depth.png"), np.concatenate(pane + [depth_image(d, lo, hi)], 1)
        )
        if text_emb is not None:
            queries, q_emb, n_emb, negs = text_emb
            # Render the language field at a few scales; keep, per query, the scale whose map
            # reaches the highest relevancy (the reference's scale search, on a coarse grid).
            clips = {s: session.render_view(f.K, f.c2w, f.height, f.width, scale=s)["clip"] for s in probe_scales}
            for qi, q in enumerate(queries):
                best = None
                for s, clip in clips.items():
                    rel = (
                        relevancy(
                            clip.reshape(-1, clip.shape[-1]).cpu(), q_emb[qi], n_emb, temperature=cfg.query.temperature
                        )
                        .reshape(f.height, f.width)
                        .numpy()
                    )
                    if best is None or rel.max() > best[1].max():
                        best = (s, rel)
                s, rel = best
                save_png(
                    os.path.join(render_dir, f"view_{i:03d}_relevancy_{_slug(q)}.png"),
                    np.concatenate([rgb, colormap((rel - 0.5) * 2.0)], axis=1),
                )
                rel_info.setdefault(q, []).append({"view": i, "scale_m": s, "max_relevancy": float(rel.max())})
    metrics = {
        "scene": str(args.scene),
        "preset": cfg.preset,
        "device": str(trainer.device),
        "steps": session.step_count,
        "train_seconds": t_train,
        "rays_per_second": trainer.rays_per_second,
        "heldout_psnr": ev["psnr"],
        "heldout_psnr_per_view": dict(zip(map(str, eval_idx), ev["psnr_per_view"])),
        "teacher": teacher.description,
        "history": history,
        "checkpoint": final,
        "relevancy": rel_info,
        "negatives": text_emb[3] if text_emb else [],
    }
    if "depth_mae_m" in ev:
        metrics["heldout_depth_mae_m"] = ev["depth_mae_m"]
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2)
    print(f"wrote {out_dir}: config.yaml, checkpoints/, renders/, metrics.json")
    return 0
