"""Evaluating a trained snapshot on its scene: 3D queries by name and synonym, absent words, grasps,
relevancy-cloud precision and recall, and 2D localization on the held-out views (the protocol is
described in ``lerf_ros.bench``)."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lerf_ros.bench.machine import Progress
from lerf_ros.bench.metrics import answer_metrics, box_2d, grasp_checks, in_box_2d, percentile, precision_recall
from lerf_ros.bench.settings import BenchSettings
from lerf_ros.geometry.camera import backproject


def relevancy_maps_2d(
    snapshot,
    K: np.ndarray,
    c2w: np.ndarray,
    height: int,
    width: int,
    texts: Sequence[str],
    text_cache,
    canonical: Sequence[str],
    scales: Sequence[float],
    temperature: float,
) -> Dict[str, Tuple[np.ndarray, float]]:
    """LERF 2D relevancy maps of a view: rendered depth -> back-projected points -> the language
    field at each candidate scale -> relevancy against the canonical negatives (the query left
    out). Per text: ((H, W) map at the scale whose map peaks highest, that scale)."""
    import torch

    from lerf_ros.teachers.text import relevancy

    if not texts:
        return {}
    rendered = snapshot.render(K, c2w, height, width)
    pts = torch.from_numpy(backproject(rendered["depth"].cpu().numpy(), K, c2w).reshape(-1, 3).astype(np.float32))
    embs = {t: (text_cache.query(t), text_cache.negatives(canonical=canonical, exclude=[t])) for t in texts}
    best: Dict[str, Tuple[np.ndarray, float]] = {}
    for s in scales:
        phi = snapshot.language(pts, torch.tensor(float(s))).float().cpu()
        for t, (q, negs) in embs.items():
            rel = relevancy(phi, q, negs, temperature=temperature).numpy()
            if t not in best or rel.max() > best[t][0].max():
                best[t] = (rel.reshape(height, width), float(s))
    return best


def curve_point(step: int, train_s: float, ev: Dict[str, Any]) -> Dict[str, Any]:
    """One point of a learning curve: the step, the training seconds so far and the main 3D metrics
    of the evaluation ``ev`` (from ``evaluate_snapshot``), with each object's relevancy and the
    objects answered wrongly."""
    m = ev["metrics"]
    return {
        "step": step,
        "train_s": train_s,
        **{
            k: m[k]
            for k in (
                "loc3d_accuracy_name",
                "loc3d_argmax_accuracy_name",
                "precision_mean",
                "recall_mean",
                "grasp_valid_rate",
                "absent_false_positive_rate",
                "objects_on_surface_fraction",
            )
        },
        "max_relevancy": {o["name"]: o["max_relevancy"] for o in ev["objects"]},
        "wrong": [o["name"] for o in ev["objects"] if not o["correct"]],
    }


def absent_words(scene, teacher, settings: BenchSettings) -> List[Tuple[str, str]]:
    """[(word, kind)] of absent-object queries: 'absent_class' (vocabulary classes not in the scene,
    chosen by the scene seed) and 'non_vocabulary' (words the teacher maps to no class)."""
    absent = scene.absent_classes()
    rng = np.random.default_rng([int(scene.seed), 0xAB5])
    pick = [
        absent[i]
        for i in sorted(rng.choice(len(absent), size=min(settings.n_absent_vocabulary, len(absent)), replace=False))
    ]
    words = [(w, "absent_class") for w in pick]
    for w in settings.non_vocabulary_words:
        if getattr(teacher, "class_index", lambda _t: None)(w) is not None:
            raise ValueError(f"'{w}' names a class of the synthetic vocabulary: not a non-vocabulary word")
        words.append((w, "non_vocabulary"))
    return words


def physics_of_grasps(scene, engine, objects: List[Dict[str, Any]], grasps: Dict[str, list], settings: BenchSettings):
    """Execute each object's top grasps in physics (``lerf_ros.sim``) and add the outcome to its
    grasp record (``rec["grasp"]["physics"]``); save up to ``settings.grasp_pictures`` pictures of
    attempts (failed best grasps first) into ``settings.grasp_pictures_dir``."""
    import os

    from lerf_ros.sim import offscreen_gl

    offscreen_gl()
    from lerf_ros.sim import SimWorld, grasp_physics, objects_from_scene

    world = SimWorld(objects_from_scene(scene), engine.gripper)
    for rec in objects:
        rec["grasp"]["physics"] = grasp_physics(world, grasps.get(rec["name"], []), rec["name"], settings.physics_top_k)
    if not settings.grasp_pictures_dir or settings.grasp_pictures <= 0:
        return
    from lerf_ros.sim.pictures import save_attempt_picture

    order = sorted((r for r in objects if grasps.get(r["name"])), key=lambda r: r["grasp"]["physics"]["best_success"])
    for rec in order[: settings.grasp_pictures]:
        g = grasps[rec["name"]][0]
        name = f"{settings.mode}_seed{int(scene.seed)}_{rec['name'].replace(' ', '_').replace(chr(39), '')}.png"
        try:
            save_attempt_picture(world, g.pose, g.width, rec["name"], os.path.join(settings.grasp_pictures_dir, name))
        except Exception as exc:  # no OpenGL backend: the numbers stand without the pictures
            rec["grasp"]["physics"]["picture_error"] = f"{type(exc).__name__}: {exc}"
            return


def evaluate_snapshot(
    scene,
    snapshot,
    cfg,
    teacher,
    settings: BenchSettings,
    progress: Progress,
    with_2d: bool = True,
    with_physics: Optional[bool] = None,
) -> Dict[str, Any]:
    """Every metric of one trained snapshot on its scene (see ``lerf_ros.bench``); ``with_2d``
    False skips the held-out 2D evaluation; ``with_physics`` (default: ``with_2d``, so the final
    evaluation and not the learning-curve points) executes the grasps in physics when
    ``settings.physics``."""
    from lerf_ros.query import QueryEngine

    qc = cfg.query
    engine = QueryEngine(qc, teacher.encode_text)
    engine.set_snapshot(snapshot)
    absent = absent_words(scene, teacher, settings)
    phrases = [p for o in scene.objects for p in o.phrases()] + [w for w, _ in absent]
    engine.texts.embed(list(dict.fromkeys(phrases + list(qc.canonical_phrases))))  # latency excludes text encoding
    t0 = time.perf_counter()
    prep = engine.prepare()
    prep_ms = 1000 * (time.perf_counter() - t0)
    surface = engine.surface()
    n_surface = 0 if surface is None else len(surface)
    surface_xyz = np.zeros((0, 3)) if surface is None else surface.xyz

    queries: List[Dict[str, Any]] = []
    objects: List[Dict[str, Any]] = []
    top_grasps: Dict[str, list] = {}
    for obj in scene.objects:
        rec: Dict[str, Any] = {
            "name": obj.name,
            "instance_id": obj.instance_id,
            "size_m": [round(float(s), 4) for s in obj.size],
            # candidate surface points on the object: 0 means surface extraction missed it
            "surface_points_on_object": int(obj.contains(surface_xyz, settings.grow_3d).sum()),
        }
        for j, phrase in enumerate(obj.phrases()):
            r = engine.query(phrase)
            top = r.points[0] if r.success and len(r.points) else None
            correct = bool(top is not None and obj.contains(top[None], settings.grow_3d)[0])
            q = {
                "object": obj.name,
                "text": phrase,
                "kind": "name" if j == 0 else "synonym",
                "answered": r.success,
                "correct": correct,
                "max_relevancy": r.max_relevancy,
                "scale": r.scale,
                "points": int(len(r.points)),
                "latency_ms": r.timings.get("total", 0.0),
                "field_ms": r.timings.get("field", 0.0),
                "cluster_ms": r.timings.get("cluster", 0.0),
                "text_ms": r.timings.get("text", 0.0),
            }
            if top is not None:
                q["top_point"] = [round(float(x), 4) for x in top]
                q["top_distance_to_center_m"] = float(np.linalg.norm(top - obj.center))
            queries.append(q)
            if j != 0:
                continue
            rec.update(
                {
                    "answered": r.success,
                    "correct": correct,
                    "max_relevancy": r.max_relevancy,
                    "scale": r.scale,
                    "points": int(len(r.points)),
                    "message": r.message,
                }
            )
            # argmax accuracy: the most relevant surface point whatever its relevancy
            if r.success:
                rec["argmax_correct"] = correct
            elif r.step >= 0 and n_surface:
                d = engine.query(phrase, threshold=1e-6, max_grasps=1)
                rec["argmax_correct"] = bool(
                    d.success and len(d.points) and obj.contains(d.points[:1], settings.grow_3d)[0]
                )
            else:
                rec["argmax_correct"] = False
            prec, recall = precision_recall(r.points, obj.surface_points, settings.surface_tol)
            rec["precision"], rec["recall"] = prec, recall
            if r.grasps:
                top_grasps[obj.name] = list(r.grasps[: settings.physics_top_k])
                g = r.grasps[0]
                rec["grasp"] = grasp_checks(
                    g.pose,
                    g.width,
                    obj,
                    engine.gripper,
                    qc.gripper_max_width,
                    settings.grow_grasp,
                    float(scene.table_height),
                    settings.table_tol,
                )
                rec["grasp"].update({"returned": True, "kind": g.kind, "score": float(g.score)})
            else:
                # the planner's reason is the tail of the answer's message (or why nothing was answered)
                note = r.message.split("; ")[-1] if r.success else f"query not answered: {r.message}"
                rec["grasp"] = {
                    "returned": False,
                    "valid": False,
                    "in_object": False,
                    "clear_of_table": False,
                    "width_ok": False,
                    "note": note,
                }
        objects.append(rec)
    physics = settings.physics and (with_2d if with_physics is None else with_physics)
    t_phys = time.perf_counter()
    if physics:
        physics_of_grasps(scene, engine, objects, top_grasps, settings)
    t_phys = time.perf_counter() - t_phys

    absent_res = []
    for word, kind in absent:
        r = engine.query(word)
        absent_res.append(
            {
                "text": word,
                "kind": kind,
                "max_relevancy": r.max_relevancy,
                "above_threshold": bool(r.success),
                "points": int(len(r.points)),
                "latency_ms": r.timings.get("total", 0.0),
            }
        )
        queries.append(
            {
                "object": None,
                "text": word,
                "kind": kind,
                "answered": r.success,
                "correct": not r.success,
                "max_relevancy": r.max_relevancy,
                "latency_ms": r.timings.get("total", 0.0),
                "field_ms": r.timings.get("field", 0.0),
                "cluster_ms": r.timings.get("cluster", 0.0),
                "text_ms": r.timings.get("text", 0.0),
            }
        )

    # 2D localization on the held-out views
    views2d = []
    held = [i for i in range(len(scene.frames)) if i % settings.holdout_every == 0] if with_2d else []
    bar = progress.bar(total=len(held), desc=f"2D held-out seed {scene.seed}", unit="view")
    t2d = time.perf_counter()
    try:
        for i in held:
            f = scene.frames[i]
            boxes = {o.name: box_2d(f.instance, o.instance_id, settings.min_box_pixels) for o in scene.objects}
            visible = [n for n, b in boxes.items() if b is not None]
            maps = relevancy_maps_2d(
                snapshot,
                f.K,
                f.c2w,
                f.height,
                f.width,
                visible,
                engine.texts,
                qc.canonical_phrases,
                qc.scales,
                qc.temperature,
            )
            for name in visible:
                rel, s = maps[name]
                r_, c_ = np.unravel_index(int(np.argmax(rel)), rel.shape)
                views2d.append(
                    {
                        "view": i,
                        "object": name,
                        "correct": in_box_2d((int(r_), int(c_)), boxes[name]),
                        "max_relevancy": float(rel.max()),
                        "scale": s,
                        "argmax_pixel": [int(r_), int(c_)],
                        "box": list(boxes[name]),
                    }
                )
            bar.update(1)
    finally:
        bar.close()
    t2d = time.perf_counter() - t2d

    lat = [q["latency_ms"] for q in queries]
    metrics = {
        **answer_metrics(objects, queries, views2d, absent_res),
        "query_latency_ms_p50": percentile(lat, 50),
        "query_latency_ms_p95": percentile(lat, 95),
        "query_field_ms_p50": percentile([q["field_ms"] for q in queries], 50),
        "query_cluster_ms_p50": percentile([q["cluster_ms"] for q in queries], 50),
        "query_text_ms_p50": percentile([q["text_ms"] for q in queries], 50),
        "query_prepare_ms": prep_ms,
        "query_prepare_surface_ms": prep["surface"],
        "query_prepare_features_ms": prep["features"],
        "surface_points": n_surface,
        "eval_2d_s": t2d,
        "physics_s": t_phys,
        "threshold": qc.threshold,
    }
    return {"metrics": metrics, "objects": objects, "absent": absent_res, "queries": queries, "views_2d": views2d}
