"""`lerf-ros weights`: --check, --from and the offline fetch, as a user runs them (the real command
in a child process whose home, hub cache and torch hub folder are a temporary folder).

The imported files are the real architectures of the `lerf` preset (OpenCLIP ViT-B-16, timm DINO
ViT-S/8) with random weights, written here; no network is used: the fetch is pointed at a closed
local port to show the offline message.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DINO = "vit_small_patch8_224.dino"
CLIP_REPO_FOLDER = "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
DINO_REPO_FOLDER = "models--timm--vit_small_patch8_224.dino"


def weights_cmd(home: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    """``lerf-ros weights ARGS`` with ``home`` as HOME, HF_HOME and TORCH_HOME root."""
    env = dict(os.environ)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME"):
        env.pop(key, None)
    env.update(HOME=str(home), HF_HOME=str(home / "hf"), TORCH_HOME=str(home / "torch"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "lerf_ros.cli", "weights", *args],
        env=env,
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )


def files_under(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


@pytest.fixture(scope="module")
def dino_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(DINO, pretrained=False, num_classes=0)


@pytest.fixture(scope="module")
def dino_file(dino_model, tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("downloads") / "dino_vits8.safetensors"
    save_file({k: v.contiguous() for k, v in dino_model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def dino_pth(dino_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("downloads") / "dino_vits8.pth"
    torch.save(dino_model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """OpenCLIP ViT-B-16 (the `lerf` preset's architecture) with random weights."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    path = tmp_path_factory.mktemp("downloads") / "vitb16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_check_says_what_is_missing_and_exits_nonzero(tmp_path):
    r = weights_cmd(tmp_path, "--preset", "lerf", "--check")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("MISSING") == 2
    assert "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in r.stdout and "timm/vit_small_patch8_224.dino" in r.stdout
    assert "lerf-ros weights --preset lerf --from FILE" in r.stdout
    big = weights_cmd(tmp_path, "--preset", "lerf-big", "--check")
    assert big.returncode == 1 and "ViT-L-14 / laion2b_s32b_b82k: MISSING" in big.stdout
    # A configuration that needs no weights
    none = weights_cmd(tmp_path, "--preset", "lerf", "--set", "teacher.random_weights=true", "--check")
    assert none.returncode == 0 and "none needed" in none.stdout, none.stdout + none.stderr
    assert files_under(tmp_path) == []  # checking writes nothing
    typo = weights_cmd(tmp_path, "--set", "teacher.clip_model=ViT-B-61", "--check")
    assert typo.returncode == 2 and "teacher.clip_model = 'ViT-B-61' is not an OpenCLIP architecture" in typo.stderr


def test_import_dino_into_a_cache_folder_the_loader_reads(tmp_path, dino_file, dino_model):
    cache = tmp_path / "weights"
    r = weights_cmd(tmp_path, "--preset", "lerf", "--cache-dir", str(cache), "--from", str(dino_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "imported" in r.stdout and "model.safetensors" in r.stdout
    check = weights_cmd(tmp_path, "--preset", "lerf", "--cache-dir", str(cache), "--check")
    assert check.returncode == 1  # OpenCLIP still missing
    assert "dino  timm vit_small_patch8_224.dino: present" in check.stdout
    assert "ViT-B-16 / laion2b_s34b_b88k: MISSING" in check.stdout
    # The nodes' own loader, pointed at that cache by teacher.weights_cache_dir, finds and loads it.
    from lerf_ros.teachers.dino import DinoEncoder

    enc = DinoEncoder(DINO, cache_dir=str(cache), device="cpu")
    assert "RANDOM" not in enc.description and "pretrained" in enc.description
    want = dino_model.state_dict()["patch_embed.proj.weight"]
    torch.testing.assert_close(enc.model.state_dict()["patch_embed.proj.weight"], want)


def test_import_real_clip_architecture_and_pytorch_dino_then_check_verify(tmp_path, clip_file, dino_pth):
    t0 = time.monotonic()
    r = weights_cmd(tmp_path, "--preset", "lerf", "--from", str(clip_file))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "as OpenCLIP ViT-B-16 / laion2b_s34b_b88k" in r.stdout
    r = weights_cmd(tmp_path, "--preset", "lerf", "--from", str(dino_pth), "--which", "dino")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pytorch_model.bin" in r.stdout  # stored under the name of its format
    hub = tmp_path / "hf" / "hub"
    assert (hub / CLIP_REPO_FOLDER / "refs" / "main").is_file() and (hub / DINO_REPO_FOLDER / "refs" / "main").is_file()
    check = weights_cmd(tmp_path, "--preset", "lerf", "--check", "--verify")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": present") == 2 and "all present and verified" in check.stdout
    assert f"imported from {clip_file}" in check.stdout  # not claimed to match a published checksum
    # The nodes' loader finds the OpenCLIP file in the default hub cache and loads these very weights.
    import open_clip

    from lerf_ros.teachers.clip import ClipEncoder

    enc = ClipEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(hub), device="cpu")
    assert enc.description == "OpenCLIP ViT-B-16 (laion2b_s34b_b88k)"
    torch.manual_seed(1)
    ref = open_clip.create_model("ViT-B-16", pretrained=None).state_dict()["visual.conv1.weight"]
    torch.testing.assert_close(enc.model.state_dict()["visual.conv1.weight"], ref)
    print(f"import + check of ViT-B-16 and DINO ViT-S/8: {time.monotonic() - t0:.1f} s")


def test_a_file_that_does_not_load_is_refused_and_nothing_is_written(tmp_path, dino_file):
    r = weights_cmd(tmp_path, "--preset", "lerf", "--from", str(dino_file), "--which", "clip")
    assert r.returncode == 2
    assert "does not load into OpenCLIP ViT-B-16" in r.stderr and "nothing imported" in r.stderr
    assert files_under(tmp_path / "hf") == []
    r = weights_cmd(tmp_path, "--preset", "lerf", "--from", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_check_verify_finds_a_damaged_download(tmp_path, dino_file):
    # A hub cache entry whose blob is not what its name (the hub's SHA-256) says, as after a download
    # cut short or a disk fault.
    root = tmp_path / "hf" / "hub" / DINO_REPO_FOLDER
    blob = root / "blobs" / ("ab" * 32)
    snap = root / "snapshots" / ("c" * 40) / "model.safetensors"
    blob.parent.mkdir(parents=True)
    snap.parent.mkdir(parents=True)
    shutil.copyfile(dino_file, blob)
    os.symlink(os.path.relpath(blob, snap.parent), snap)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("c" * 40)
    quick = weights_cmd(tmp_path, "--preset", "lerf", "--check")
    assert "dino  timm vit_small_patch8_224.dino: present" in quick.stdout
    deep = weights_cmd(tmp_path, "--preset", "lerf", "--check", "--verify")
    assert deep.returncode == 1
    assert "is damaged" in deep.stdout and "ab" * 32 in deep.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_without_a_connection_says_what_to_do(tmp_path):
    t0 = time.monotonic()
    r = weights_cmd(tmp_path, "--preset", "lerf", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    assert "could not download OpenCLIP ViT-B-16 / laion2b_s34b_b88k" in r.stderr
    assert "is not reachable" in r.stderr and "no internet access" in r.stderr
    assert "lerf-ros weights --preset lerf --from FILE" in r.stderr
    assert took < 60, f"the offline answer took {took:.0f} s"
    assert files_under(tmp_path / "hf" / "hub") == []
    # The nodes' offline switch is respected: nothing is attempted.
    r = weights_cmd(tmp_path, "--preset", "lerf", HF_HUB_OFFLINE="1")
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr


def test_the_start_up_error_names_the_command(tmp_path):
    from lerf_ros.teachers.clip import ClipEncoder
    from lerf_ros.teachers.dino import DinoEncoder
    from lerf_ros.teachers.weights import TeacherWeightsError

    for build in (
        lambda: ClipEncoder("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path), device="cpu"),
        lambda: DinoEncoder(DINO, cache_dir=str(tmp_path), device="cpu"),
    ):
        with pytest.raises(TeacherWeightsError) as err:
            build()
        assert f"lerf-ros weights --preset <your preset> --cache-dir {tmp_path}" in str(err.value)
