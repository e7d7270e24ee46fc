"""Query latency of the query engine, and the cost of its per-snapshot query cache.

Measures on a synthetic scene (seed 0, 60 views at 160x120):
  - text encoding: first-time cost of [query + 4 canonical phrases] with the ground-truth teacher
    and with OpenCLIP ViT-B-16 (random weights: cost only), and the cached cost;
  - the query cache build (``ProjectedFeatures``: the language field at every candidate point and
    scale, in the field's output basis) on the real ``tiny``-preset field (``LerfModel`` with random
    weights in a ``FrozenField``), median of ``--cache-repeats`` builds, for each size:
      * "one_pass": ``FrozenField.language_multi_scale`` (hash grids once per point) and its
        guaranteed output basis (``language_basis``) — what the engine uses;
      * "per_scale_estimated_basis": the same field through ``ReferencePaths`` (tests/analytic_field.py):
        called once per scale, basis estimated from samples — the path every build took before
        ``FrozenField`` had the one-pass methods;
  - per query, for 10k and 50k candidate surface points: p50/p95 of the total and of its parts
    (text, field = the scale search over the candidate scales, cluster = DBSCAN + grasps) and the
    process CPU time of a query (the cores may be shared with other work), on two fields:
      * "analytic": the scene's ground-truth field (tests/analytic_field.py);
      * "tiny_model": the real tiny field above (untrained weights: its timings are real, its
        answers are not), on the same surface points (the surface comes from the scene's exact
        render so the candidate count is what is asked);
    each with the engine's per-snapshot projected features (default) and without them
    (``feature_cache_mb = 0``: the field is evaluated for every query);
  - the one-off costs per snapshot: surface extraction (also with the tiny field's own renders)
    and projected features;
  - training rays/s of a tiny mapping session alone and during a burst of back-to-back queries from
    a second thread in the same process.
Writes JSON (default bench/results/query.json) and prints a summary.

    python bench/bench_query.py --threads 2        # CPU
    python bench/bench_query.py --device cuda      # field and features on the GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from lerf_ros.config import preset  # noqa: E402
from lerf_ros.data.synthetic import make_scene  # noqa: E402
from lerf_ros.field.frozen import FrozenField  # noqa: E402
from lerf_ros.field.model import LerfModel  # noqa: E402
from lerf_ros.query import QueryEngine  # noqa: E402
from lerf_ros.query.relevancy import ProjectedFeatures  # noqa: E402
from lerf_ros.query.surface import extract_surface  # noqa: E402
from lerf_ros.teachers.ground_truth import GroundTruthTeacher  # noqa: E402

from analytic_field import AnalyticSnapshot, LanguageFromModel, ReferencePaths  # noqa: E402

PARTS = ("total", "text", "field", "cluster", "cpu")
"""'cpu': process CPU time of the whole query (all threads), less sensitive to other load on shared cores."""


def cache_build(fields: Dict[str, object], xyz: torch.Tensor, cfg, repeats: int) -> Dict[str, Dict]:
    """Median time of the engine's query cache build (``ProjectedFeatures.build``) per field, and
    the largest difference of the cached coefficients' reconstructions between the fields."""
    scales = torch.tensor(cfg.scales, dtype=torch.float32, device=xyz.device)
    out, recon = {}, {}
    for name, snap in fields.items():
        ms = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            feats, note = ProjectedFeatures.build(
                snap, xyz, scales, cfg.field_chunk_points, int(cfg.feature_cache_mb * 2**20)
            )
            ms.append(1000 * (time.perf_counter() - t0))
        if feats is None:
            raise RuntimeError(f"{name}: no query cache ({note})")
        recon[name] = feats.coeffs[:2000] @ feats.basis  # (n, S, D) language
        out[name] = {
            "median_ms": round(float(np.median(ms)), 1),
            "ms": [round(m, 1) for m in ms],
            "basis_rank": int(feats.basis.shape[0]),
            "mib": round(feats.nbytes / 2**20, 1),
        }
    names = list(recon)
    out["max_abs_difference"] = max(float((recon[n] - recon[names[0]]).abs().max()) for n in names)
    return out


def pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


def summarise(timings: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    return {
        p: {"p50_ms": round(pct([t[p] for t in timings], 50), 2), "p95_ms": round(pct([t[p] for t in timings], 95), 2)}
        for p in PARTS
    }


def query_texts(scene) -> List[str]:
    texts = []
    for o in scene.objects:
        texts += [o.class_name] + list(o.synonyms[:1])
    return texts + scene.absent_classes()[:3] + ["giraffe"]


def run_queries(engine: QueryEngine, texts: List[str], repeats: int, threshold: float) -> Dict:
    """Warm-up pass (first-time text encoding), then ``repeats`` passes over ``texts``."""
    first = [engine.query(t, threshold=threshold).timings for t in texts]
    timings, answered = [], 0
    for _ in range(repeats):
        for t in texts:
            c0 = time.process_time()
            r = engine.query(t, threshold=threshold)
            timings.append(dict(r.timings, cpu=1000 * (time.process_time() - c0)))
            answered += int(r.success)
    return {
        "queries": len(timings),
        "answered": answered,
        **summarise(timings),
        "first_pass_text_p50_ms": round(pct([t["text"] for t in first], 50), 2),
    }


def bench_engine(cfg, encode_text, snapshot, texts, repeats, threshold) -> Dict:
    engine = QueryEngine(cfg, encode_text)
    engine.set_snapshot(snapshot)
    prep = engine.prepare()
    out = {
        "candidates": len(engine.surface()),
        "surface_ms": round(prep["surface"], 1),
        "features_ms": round(prep["features"], 1),
        "features_note": engine.status()["features_note"],
    }
    out.update(run_queries(engine, texts, repeats, threshold))
    return out


def text_encoding(teacher, device: str) -> Dict:
    from lerf_ros.teachers.clip import ClipEncoder
    from lerf_ros.teachers.text import CANONICAL_PHRASES, TextEncoderCache

    out = {}
    queries = ["a red mug", "the blue bottle", "something to cut paper", "a ripe banana", "my keys"]
    for name, enc in (
        ("ground_truth", teacher.encode_text),
        ("openclip_vit_b16_random_weights", ClipEncoder("ViT-B-16", random_weights=True, device=device).encode_text),
    ):
        enc(["warm up"])
        first = []
        for q in queries:
            t0 = time.perf_counter()
            enc([q] + list(CANONICAL_PHRASES))
            first.append(1000 * (time.perf_counter() - t0))
        cache = TextEncoderCache(enc)
        cache.embed([queries[0]] + list(CANONICAL_PHRASES))
        cached = []
        for _ in range(20):
            t0 = time.perf_counter()
            cache.embed([queries[0]] + list(CANONICAL_PHRASES))
            cached.append(1000 * (time.perf_counter() - t0))
        out[name] = {"first_time_p50_ms": round(pct(first, 50), 2), "cached_p50_ms": round(pct(cached, 50), 3)}
    return out


def training_during_queries(scene, teacher, geometry, cfg, seconds: float, device: str) -> Dict:
    """Training rays/s of a tiny mapping session alone and while another thread sends queries
    back to back to the engine over the session's own snapshot (one process, shared cores)."""
    from lerf_ros.mapping.session import Session

    lcfg = preset("tiny").override({"device": device, "teacher.kind": "ground_truth"})
    session = Session(lcfg, teacher, online=False, log=lambda level, text: None)
    for f in scene.frames:
        session.add(f)

    def train_for(sec: float) -> float:
        rays, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < sec:
            rays += int(session.step()["rays"])
        return rays / (time.perf_counter() - t0)

    train_for(2.0)  # warm-up
    alone = train_for(seconds)
    engine = QueryEngine(cfg, teacher.encode_text)
    engine.set_snapshot(LanguageFromModel(session.snapshot(), geometry))
    prep = engine.prepare()
    texts = query_texts(scene)
    stop, lat = threading.Event(), []

    def burst():
        i = 0
        while not stop.is_set():
            lat.append(engine.query(texts[i % len(texts)], threshold=0.5).timings["total"])
            i += 1

    t = threading.Thread(target=burst)
    t.start()
    during = train_for(seconds)
    stop.set()
    t.join()
    return {
        "rays_per_batch": lcfg.trainer.rays_per_batch,
        "seconds": seconds,
        "rays_per_s_alone": round(alone),
        "rays_per_s_during_queries": round(during),
        "drop_percent": round(100 * (1 - during / alone), 1),
        "queries_during": len(lat),
        "query_p50_ms": round(pct(lat, 50), 1),
        "query_p95_ms": round(pct(lat, 95), 1),
        "candidates": len(engine.surface()),
        "features_ms": round(prep["features"], 1),
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "query.json"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--repeats", type=int, default=3, help="passes over the query texts per case")
    ap.add_argument("--cache-repeats", type=int, default=5, help="query cache builds timed per field and size")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on shared cores, waiting worker threads distort the timings)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-seconds", type=float, default=15.0, help="training time alone and during queries")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    t0 = time.perf_counter()
    scene = make_scene(seed=0, n_frames=60, width=160, height=120)
    teacher = GroundTruthTeacher(scene)
    analytic = AnalyticSnapshot(scene, teacher.encode_text, step=1000, device=args.device)
    texts = query_texts(scene)
    lcfg = preset("tiny").override({"device": args.device})
    base = lcfg.query
    # Dense enough a surface for 50k candidates: full-resolution renders of every view, 5 mm voxels.
    geo = dict(surface_stride=1, surface_max_views=60, voxel_size=0.005, dbscan_eps=0.015)
    result: Dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "device": str(dev),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "loadavg_at_start": list(os.getloadavg()),
        },
        "scene": {"seed": 0, "views": len(scene.frames), "size": [160, 120], "objects": scene.present_classes()},
        "query_texts": texts,
        "scales": list(base.scales),
        "notes": [
            "latencies exclude first-time text encoding (the warm-up pass encodes every text once)",
            "the machine's cores are shared: compare loadavg_at_start/end with cpu_count",
            "tiny model: LerfModel(preset tiny) with random weights (seed 0) in a FrozenField: cost only; "
            "threshold 0.5 so the untrained field's points reach clustering",
            "analytic: the default threshold",
            "cache_build: ProjectedFeatures.build, the engine's per-(snapshot, surface) query cache, "
            f"median of {args.cache_repeats}",
        ],
        "text_encoding": text_encoding(teacher, args.device),
        "cache_build": {},
        "analytic": {},
        "tiny_model": {},
    }
    print("text encoding:", json.dumps(result["text_encoding"]))

    torch.manual_seed(0)
    frozen = FrozenField(LerfModel(lcfg.model, teacher.clip_dim, teacher.dino_dim).to(dev), analytic.cameras, step=0)
    model_snap = LanguageFromModel(frozen, analytic)
    # Surface refresh with the real model's own renders (untrained: the point count is arbitrary).
    t1 = time.perf_counter()
    surf = extract_surface(frozen, dataclasses.replace(base, surface_max_views=20))
    result["tiny_model"]["surface_refresh_own_render"] = {
        "views": 20,
        "stride": base.surface_stride,
        "ms": round(1000 * (time.perf_counter() - t1), 1),
        "points": len(surf),
        "render_ms": round(surf.stats.get("render_ms", float("nan")), 1),
    }

    for n in args.sizes:
        cfg = dataclasses.replace(base, max_candidate_points=n, **geo).check()
        xyz = torch.from_numpy(extract_surface(analytic, cfg).xyz).float().to(dev)
        res = cache_build(
            {"one_pass": model_snap, "per_scale_estimated_basis": ReferencePaths(model_snap)},
            xyz,
            cfg,
            args.cache_repeats,
        )
        res["points"] = len(xyz)
        result["cache_build"][str(n)] = res
        print(
            f"cache build N={len(xyz):6d}: one pass {res['one_pass']['median_ms']:.1f} ms (rank "
            f"{res['one_pass']['basis_rank']}), per scale + estimated basis "
            f"{res['per_scale_estimated_basis']['median_ms']:.1f} ms (rank "
            f"{res['per_scale_estimated_basis']['basis_rank']}); max |difference| {res['max_abs_difference']:.2e}",
            flush=True,
        )
        for field_name, snap, thr in (("analytic", analytic, 0.0), ("tiny_model", model_snap, 0.5)):
            for mode, mb in (("features", base.feature_cache_mb), ("direct", 0.0)):
                cfg = dataclasses.replace(base, max_candidate_points=n, feature_cache_mb=mb, **geo).check()
                reps, qtexts = args.repeats, texts
                if field_name == "tiny_model" and mode == "direct":
                    qtexts, reps = texts[:3], 1  # the field per query: slow on a CPU
                res = bench_engine(cfg, teacher.encode_text, snap, qtexts, reps, thr)
                result[field_name][f"{n}_{mode}"] = res
                print(
                    f"{field_name:10s} N={n:6d} {mode:8s} candidates={res['candidates']:6d} "
                    f"features={res['features_ms']:8.1f} ms  "
                    + "  ".join(f"{p} p50/p95 {res[p]['p50_ms']:.1f}/{res[p]['p95_ms']:.1f}" for p in PARTS),
                    flush=True,
                )

    result["training_during_queries"] = training_during_queries(
        scene, teacher, analytic, base, args.train_seconds, args.device
    )
    print("training during queries:", json.dumps(result["training_during_queries"]))
    result["bench_seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
