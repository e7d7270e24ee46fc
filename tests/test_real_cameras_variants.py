"""The real-cameras benchmark's pose variants on every condition (``bench/real_cameras.py``):
``--variant-conditions`` is checked, a variant's handled row of another condition is compared with
clean trained with the same variant, and merging an already merged result keeps its runs."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import real_cameras as rc  # noqa: E402  (bench/real_cameras.py)


def row(psnr: float, loc: float) -> dict:
    return {"heldout_psnr": psnr, "loc3d_accuracy_name": loc, "grasp_valid_rate": 1.0, "wrong": []}


def doc(command: str, seeds: dict, **extra) -> dict:
    header = {
        "scene": {"width": 96, "height": 72, "frames": 32, "hfov_deg": 70.0},
        "holdout_every": 8,
        "steps": 400,
        "threads": 1,
        "total_s": 10.0,
        "pose_variants": {},
    }
    return {"command": command, "seeds": seeds, **header, **extra}


def test_unknown_variant_condition_is_refused_with_its_name(capsys, tmp_path):
    # were the check lost, this would be a short run (one seed, one step, clean only, 32x24, 8 frames,
    # no timing: about 20 s on a busy machine) that ends without SystemExit and writes under tmp_path,
    # not the whole benchmark over bench/results
    small = ["--seeds", "51", "--steps", "1", "--conditions", "clean", "--variants", "handling on"]
    small += ["--timing-steps", "0", "--threads", "1", "--width", "32", "--height", "24", "--frames", "8"]
    small += ["--out", str(tmp_path / "rc")]
    with pytest.raises(SystemExit):
        rc.main(["--variant-conditions", "exposure,fisheye", "--pose-variant", "v:trainer.pose_lr=0.001", *small])
    assert "fisheye" in capsys.readouterr().err


def test_variant_rows_of_other_conditions_are_judged_against_clean_with_the_variant(tmp_path):
    merged = doc(
        "python bench/real_cameras.py --seeds S",
        {"51": {"clean": {"handling on": row(25.0, 0.9), "handling on (v)": row(24.0, 0.8)}}},
        combined_from=["run a", "run b"],
        pose_variants={"v": {"trainer.pose_lr": 0.001}},
    )
    new = doc(
        "run c",
        {"51": {"exposure": {"handled (v)": row(23.2, 0.8)}, "plumb_bob": {"handled (v)": row(23.7, 0.8)}}},
        pose_variants={"v": {"trainer.pose_lr": 0.001}},
    )
    paths = []
    for name, d in (("merged", merged), ("new", new)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as fh:
            json.dump(d, fh)
    res = rc.combine(paths, str(tmp_path / "out"))
    assert res["combined_from"] == ["run a", "run b", "run c"]
    assert res["pose_variants"] == {"v": {"trainer.pose_lr": 0.001}}
    rows = {(r["condition"], r["variant"]): r for r in rc.summary(res)}
    # against clean with the same variant (24.0), not clean with the defaults (25.0)
    assert rows[("exposure", "handled (v)")]["d_psnr"] == pytest.approx(-0.8)
    assert rows[("exposure", "handled (v)")]["target_met"] is True  # within 1 dB
    assert rows[("plumb_bob", "handled (v)")]["d_psnr"] == pytest.approx(-0.3)
    assert rows[("plumb_bob", "handled (v)")]["target_met"] is True  # within 0.5 dB and 2 points
    new["seeds"]["51"]["plumb_bob"]["handled (v)"] = row(23.7, 0.7)  # 10 points of localization lost
    with open(paths[1], "w") as fh:
        json.dump(new, fh)
    rows = {(r["condition"], r["variant"]): r for r in rc.summary(rc.combine(paths, str(tmp_path / "out")))}
    assert rows[("plumb_bob", "handled (v)")]["target_met"] is False
    assert "| plumb_bob | handled (v) | 51 |" in open(str(tmp_path / "out.md")).read()
