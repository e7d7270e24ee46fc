"""``lerf-ros weights``: fetch, check and import the teacher weights a configuration needs.

    lerf-ros weights --preset lerf              fetch what is missing (with progress bars), verify all
    lerf-ros weights --preset lerf --check      say what is there and what is missing (exit 1: missing)
    lerf-ros weights --preset lerf --from FILE  import a file downloaded on another machine

The weights are the ones the nodes look for at start-up (``teacher.clip_model`` /
``teacher.clip_pretrained`` for OpenCLIP, ``teacher.dino_model`` for timm's DINO), in the same caches
and by the same rules (``ClipEncoder`` / ``DinoEncoder`` lookups): ``teacher.weights_cache_dir``
(or ``--cache-dir``) when set, else the default caches (the Hugging Face hub cache ``HF_HUB_CACHE``,
``~/.cache/clip``, the torch hub folder). Downloads go through OpenCLIP's and the Hugging Face hub's
own download functions into those caches; this is the only place in the package that downloads
(the nodes never do).

Verification: a file is loaded into the real architecture (strict: every tensor of the model, with
its shape); a file in the hub cache also has its SHA-256 compared with the hub's checksum (the name
of its blob). An imported file is verified before anything is written, then stored in the hub
cache layout under the model's repository (``models--org--name/blobs/<sha256>``, a snapshot link to
it), where the nodes' lookup finds it, and where a later online fetch recognises it by its checksum
instead of downloading it again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

#: the teacher weights a configuration can need
KINDS = ("clip", "dino")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lerf", help="configuration preset: lerf, lerf-lite, lerf-big (default lerf)")
    p.add_argument("--config", help="YAML configuration or ROS parameter file (its 'preset' key wins over --preset)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override with a dotted key, e.g. teacher.clip_model=ViT-L-14 (repeatable)",
    )
    p.add_argument(
        "--cache-dir",
        help="weights cache to fill or check (default: teacher.weights_cache_dir, else the default caches)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="only say what is there and what is missing (exit 1 when missing)"
    )
    mode.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="import a weights file downloaded elsewhere (verified by loading it into the architecture first)",
    )
    p.add_argument(
        "--which",
        choices=KINDS,
        help="with --from: which weights FILE holds (default: the one it loads into)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="with --check: also verify what is there (checksum, and loading it into the architecture)",
    )


class WeightsCommandError(RuntimeError):
    """The command cannot do what was asked; the message says why and what to do."""


@dataclass
class Need:
    """One weights file a configuration needs.

    Attributes:
        kind: 'clip' or 'dino'.
        label: the model and its weights, for people ("OpenCLIP ViT-B-16 / laion2b_s34b_b88k").
        setting: the configuration key that selects it.
        file: a configured local file (``teacher.clip_checkpoint`` / ``dino_checkpoint``): nothing to fetch.
        repo: Hugging Face hub repository, or ''.
        filenames: names the lookup accepts in ``repo``, preferred first (safetensors first).
        url: direct download address when the weights have no hub repository, or ''.
        url_dir: folder a ``url`` download goes to when no cache folder is configured.
        spec: what the loader needs to build the architecture.
    """

    kind: str
    label: str
    setting: str
    file: str = ""
    repo: str = ""
    filenames: Tuple[str, ...] = ()
    url: str = ""
    url_dir: str = ""
    spec: Dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """Where the weights come from, for messages."""
        if self.file:
            return self.file
        if self.repo:
            return f"https://huggingface.co/{self.repo} ({' or '.join(self.filenames)})"
        return self.url


# ------------------------------------------------------------------------------- configuration
def _build_config(args: argparse.Namespace):
    from lerf_ros.commands import key_values
    from lerf_ros.config import ConfigError, LerfConfig, preset

    overrides = key_values(args.set, "--set", ConfigError)
    cfg = LerfConfig.load_yaml(args.config) if args.config else preset(args.preset)
    return cfg.override(overrides) if overrides else cfg


def needs_of(teacher_cfg) -> List[Need]:
    """The weights files ``teacher_cfg`` (a ``TeacherConfig``) needs: none for the ground-truth
    teacher or random weights; else OpenCLIP's and DINO's. Raises ConfigError for an unknown model."""
    if teacher_cfg.kind != "clip" or teacher_cfg.random_weights:
        return []
    return [_clip_need(teacher_cfg), _dino_need(teacher_cfg)]


def _clip_need(t) -> Need:
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    from lerf_ros.config import ConfigError
    from lerf_ros.teachers.clip import TEST_ARCHITECTURES

    spec = dict(model_name=t.clip_model, pretrained=t.clip_pretrained)
    label = f"OpenCLIP {t.clip_model} / {t.clip_pretrained}"
    if t.clip_checkpoint:
        return Need("clip", f"OpenCLIP {t.clip_model}", "teacher.clip_checkpoint", file=t.clip_checkpoint, spec=spec)
    if t.clip_model in TEST_ARCHITECTURES:
        raise ConfigError(
            f"teacher.clip_model = {t.clip_model!r} is a test architecture: it has no published weights "
            "(set teacher.clip_checkpoint to a local file)"
        )
    if t.clip_model not in open_clip.list_models():
        raise ConfigError(f"teacher.clip_model = {t.clip_model!r} is not an OpenCLIP architecture")
    tag = open_clip.get_pretrained_cfg(t.clip_model, t.clip_pretrained)
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(t.clip_model)
        raise ConfigError(
            f"teacher.clip_pretrained = {t.clip_pretrained!r} is not an OpenCLIP tag of {t.clip_model}; "
            f"known tags: {', '.join(tags) or 'none'}"
        )
    spec["tag_cfg"] = tag
    hub = tag.get("hf_hub", "")
    repo, names = "", ()
    if hub.endswith("/"):  # OpenCLIP convention: a repository with the default file names
        repo, names = hub.rstrip("/"), (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
    elif hub:
        repo, name = os.path.split(hub)
        stem, ext = os.path.splitext(name)
        names = ((stem + ".safetensors",) if ext in (".bin", ".pth", ".pt") else ()) + (name,)
    return Need(
        "clip",
        label,
        "teacher.clip_model / teacher.clip_pretrained",
        repo=repo,
        filenames=names,
        url=tag.get("url", ""),
        url_dir=os.path.expanduser("~/.cache/clip"),
        spec=spec,
    )


def _dino_need(t) -> Need:
    import timm
    import torch
    from timm.models import get_pretrained_cfg

    from lerf_ros.config import ConfigError

    spec = dict(model_name=t.dino_model, facet=t.dino_facet)
    if t.dino_checkpoint:
        return Need("dino", f"timm {t.dino_model}", "teacher.dino_checkpoint", file=t.dino_checkpoint, spec=spec)
    if not timm.is_model(t.dino_model):
        raise ConfigError(f"teacher.dino_model = {t.dino_model!r} is not a timm model")
    pcfg = get_pretrained_cfg(t.dino_model)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url):
        raise ConfigError(f"teacher.dino_model = {t.dino_model!r} has no published weights in timm")
    names = (pcfg.hf_hub_filename,) if pcfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
    return Need(
        "dino",
        f"timm {t.dino_model}",
        "teacher.dino_model",
        repo=pcfg.hf_hub_id or "",
        filenames=names,
        url=pcfg.url or "",
        url_dir=os.path.join(torch.hub.get_dir(), "checkpoints"),
        spec=spec,
    )


# ------------------------------------------------------------------------------- lookup
def find(need: Need, cache_dir: str) -> Optional[str]:
    """The file the nodes would load for ``need`` (their own lookup, offline), or None."""
    if need.file:
        return need.file if os.path.isfile(need.file) else None
    if need.kind == "clip":
        from lerf_ros.teachers.clip import ClipEncoder

        return ClipEncoder._find_tag_weights(need.spec["tag_cfg"], cache_dir)
    from lerf_ros.teachers.dino import DinoEncoder

    return DinoEncoder._find_cached(need.spec["model_name"], cache_dir)


# ------------------------------------------------------------------------------- verification
def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file's content (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: file beside a hub cache repository's folders listing the blobs imported with --from
IMPORTS_FILE = "lerf_ros_imports.txt"


def imported_from(path: str) -> Optional[str]:
    """The file a hub cache blob was imported from with ``--from`` (None: not imported)."""
    blob = os.path.realpath(path)
    listing = os.path.join(os.path.dirname(os.path.dirname(blob)), IMPORTS_FILE)
    try:
        with open(listing) as f:
            rows = [line.rstrip("\n").split(" ", 1) for line in f]
    except OSError:
        return None
    return next((row[1] for row in rows if len(row) == 2 and row[0] == os.path.basename(blob)), None)


def expected_sha256(path: str, url: str = "") -> Optional[str]:
    """The checksum a file should have, where its origin states one: a downloaded hub cache blob is
    named after the SHA-256 of its content (the hub's checksum); OpenAI's CLIP addresses hold it as
    their second-last part. None for an imported file (its name is its own checksum)."""
    blob = os.path.realpath(path)
    name = os.path.basename(blob)
    if os.path.basename(os.path.dirname(blob)) == "blobs" and _is_sha256(name):
        return None if imported_from(path) else name
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and _is_sha256(parts[-2]):
        return parts[-2]
    return None


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def load_check(need: Need, path: str) -> str:
    """Load ``path`` into the real architecture of ``need`` (CPU, strict), as the nodes would; returns
    the loader's description. Raises WeightsCommandError with the loader's reason."""
    from lerf_ros.teachers.weights import TeacherWeightsError

    try:
        if need.kind == "clip":
            from lerf_ros.teachers.clip import ClipEncoder

            enc = ClipEncoder(need.spec["model_name"], need.spec["pretrained"], checkpoint=path, device="cpu")
        else:
            from lerf_ros.teachers.dino import DinoEncoder

            enc = DinoEncoder(need.spec["model_name"], checkpoint=path, facet=need.spec["facet"], device="cpu")
    except (TeacherWeightsError, ValueError, RuntimeError, OSError) as exc:
        raise WeightsCommandError(f"{path} does not load into {need.label}: {_one_line(exc)}") from exc
    return enc.description


def verify(need: Need, path: str) -> str:
    """Checksum (where one is known) and loading; returns a one-line summary. Raises WeightsCommandError."""
    digest = sha256_of(path)
    want = expected_sha256(path, need.url)
    if want is not None and want != digest:
        raise WeightsCommandError(
            f"{path} is damaged: its SHA-256 is {digest}, the published file's is {want}. "
            f"Delete it and fetch it again (lerf-ros weights)."
        )
    load_check(need, path)
    if want:
        checked = "matches the published checksum"
    elif imported_from(path):
        checked = f"imported from {imported_from(path)}; no published checksum offline"
    else:
        checked = "no published checksum to compare"
    return f"sha256 {digest[:16]}... ({checked}); loads into {need.label}"


# ------------------------------------------------------------------------------- download
def download(need: Need, cache_dir: str) -> str:
    """Download ``need``'s weights with the libraries' own download functions (progress bars on),
    into ``cache_dir`` or the default caches. Raises WeightsCommandError saying what to do offline."""
    try:
        if need.repo:
            _probe_hub()
        if need.kind == "clip":
            from open_clip.pretrained import download_pretrained

            path = download_pretrained(need.spec["tag_cfg"], cache_dir=cache_dir or None)
        elif need.repo:
            path = _hub_download(need, cache_dir)
        else:
            path = _url_download(need, cache_dir)
    except Exception as exc:  # network, hub and file-system failures alike: say what to do instead
        raise WeightsCommandError(_offline_message(need, exc)) from exc
    if not path or not os.path.isfile(path):
        raise WeightsCommandError(f"downloading {need.label} from {need.source} produced no file")
    return path


def _probe_hub(timeout_s: float = 15.0) -> None:
    """One request to the hub's address, so that a machine without a connection hears so at once
    (the hub client retries each file for about 20 s before giving up)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as exc:
        raise ConnectionError(f"{constants.ENDPOINT} is not reachable ({_one_line(exc)})") from exc


def _hub_download(need: Need, cache_dir: str) -> str:
    """The first of ``need.filenames`` the hub repository has (a missing file tries the next name;
    any other failure is raised)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    missing: Optional[Exception] = None
    for name in need.filenames:
        try:
            return hf_hub_download(need.repo, name, cache_dir=cache_dir or None)
        except EntryNotFoundError as exc:
            missing = exc
    raise FileNotFoundError(f"{need.repo} has none of {', '.join(need.filenames)}") from missing


def _url_download(need: Need, cache_dir: str) -> str:
    import torch

    folder = cache_dir or need.url_dir
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(need.url))
    torch.hub.download_url_to_file(need.url, path, progress=True)
    return path


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The innermost reason of an exception chain, on one line."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__

    def lines(e: BaseException) -> str:  # the first two lines: a loader's headline and its first detail
        return " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__

    parts = [lines(exc)]
    if seen is not exc and str(seen).strip() and lines(seen) not in parts[0]:
        parts.append(lines(seen))
    text = " <- ".join(dict.fromkeys(parts))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _offline_message(need: Need, exc: BaseException) -> str:
    return f"could not download {need.label} from {need.source}: {_one_line(exc)}"


def _offline_advice(need: Need, again: str) -> str:
    """What to do on a machine without internet access (``again``: this command line)."""
    return (
        f"This machine may have no internet access. Either\n"
        f"  - run `{again}` on a machine that has it and copy its cache folder here (HF_HUB_CACHE,\n"
        f"    ~/.cache/huggingface/hub by default; or give it --cache-dir DIR and set teacher.weights_cache_dir\n"
        f"    to the copy here), or\n"
        f"  - download {need.source} there and import the file here with\n"
        f"    {again} --from FILE"
    )


# ------------------------------------------------------------------------------- import
def _is_safetensors(path: str) -> bool:
    """Whether a file is in the safetensors format (8-byte little-endian header size, then JSON)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < (100 << 20)


def import_file(need: Need, src: str, cache_dir: str) -> str:
    """Verify ``src`` by loading it into ``need``'s architecture, then store it where the nodes' lookup
    finds it: the hub cache layout of ``need.repo`` (``cache_dir`` or the default hub cache), or the
    URL's file name in ``cache_dir`` / ``need.url_dir``. Returns the stored path. Nothing is written
    when the file does not load."""
    if need.file:
        raise WeightsCommandError(
            f"{need.label} is configured as a local file ({need.setting} = {need.file}): nothing to import; "
            f"point {need.setting} at {src} instead"
        )
    load_check(need, src)
    digest = sha256_of(src)
    if need.repo:
        safe = _is_safetensors(src)
        names = [n for n in need.filenames if n.endswith(".safetensors") == safe]
        if not names:
            raise WeightsCommandError(
                f"{src} is {'a safetensors' if safe else 'a PyTorch'} file, but {need.repo} publishes only "
                f"{', '.join(need.filenames)}: convert it first"
            )
        path = _store_in_hub_cache(src, need.repo, names[0], digest, cache_dir)
    else:
        folder = cache_dir or need.url_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, os.path.basename(need.url))
        _copy_atomic(src, path)
    found = find(need, cache_dir)
    if found is None or os.path.realpath(found) != os.path.realpath(path):
        raise WeightsCommandError(
            f"stored {src} as {path}, but the nodes' lookup finds {found or 'nothing'} instead; "
            f"remove that file or set {need.setting} to a local file"
        )
    return path


def _copy_atomic(src: str, dst: str) -> None:
    """Copy to a temporary file beside ``dst``, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".import-", dir=os.path.dirname(dst))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _store_in_hub_cache(src: str, repo: str, filename: str, digest: str, cache_dir: str) -> str:
    """Place ``src`` in the hub cache as ``repo``'s ``filename`` at its 'main' revision: the content
    as ``blobs/<sha256>``, linked from the snapshot folder that ``refs/main`` names. Without a
    'main' revision yet (nothing of the repository fetched online), a local snapshot is named after
    the checksum; an online fetch later moves 'main' to the published revision and reuses the blob
    when the checksum matches."""
    from huggingface_hub import constants

    root = os.path.join(cache_dir or constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
    ref = os.path.join(root, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            revision = f.read().strip()
    else:
        revision = hashlib.sha1(f"{repo}:{digest}".encode()).hexdigest()
    blob = os.path.join(root, "blobs", digest)
    snap = os.path.join(root, "snapshots", revision, filename)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    os.makedirs(os.path.dirname(snap), exist_ok=True)
    if not (os.path.isfile(blob) and os.path.getsize(blob) == os.path.getsize(src)):
        _copy_atomic(src, blob)
    if os.path.lexists(snap):
        os.remove(snap)
    try:
        os.symlink(os.path.relpath(blob, os.path.dirname(snap)), snap)
    except OSError:  # a file system without links: a copy serves as well
        _copy_atomic(blob, snap)
    if not os.path.isfile(ref):
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as f:
            f.write(revision)
    if imported_from(blob) is None:
        with open(os.path.join(root, IMPORTS_FILE), "a") as f:
            f.write(f"{digest} {os.path.abspath(src)}\n")
    return snap


# ------------------------------------------------------------------------------- the command
def _size(path: str) -> str:
    return f"{os.path.getsize(path) / 1e6:.1f} MB"


def _check(needs: List[Need], cache_dir: str, deep: bool, again: str) -> int:
    missing = 0
    for need in needs:
        path = find(need, cache_dir)
        if path is None:
            missing += 1
            print(f"  {need.kind:5s} {need.label}: MISSING (source: {need.source})")
            continue
        line = f"  {need.kind:5s} {need.label}: present, {path} ({_size(path)})"
        if deep:
            try:
                line += f"\n        {verify(need, path)}"
            except WeightsCommandError as exc:
                missing += 1
                line += f"\n        BAD: {exc}"
        print(line)
    if missing:
        print(
            f"{missing} of {len(needs)} missing or bad. On a machine with internet: {again} "
            f"(or import a downloaded file: {again} --from FILE)"
        )
        return 1
    print("all present" + (" and verified" if deep else ""))
    return 0


def _again(args: argparse.Namespace) -> str:
    """The command line that repeats this selection of weights (for the user to run elsewhere)."""
    words = ["lerf-ros", "weights"] + (["--config", args.config] if args.config else ["--preset", args.preset])
    for item in args.set:
        words += ["--set", item]
    if args.cache_dir:
        words += ["--cache-dir", args.cache_dir]
    return " ".join(words)


def _import(needs: List[Need], args: argparse.Namespace, cache_dir: str) -> int:
    src = args.from_file
    if not os.path.isfile(src):
        raise WeightsCommandError(f"--from {src}: no such file")
    candidates = [n for n in needs if args.which in (None, n.kind)]
    if not candidates:
        raise WeightsCommandError(f"--which {args.which}: this configuration needs no such weights")
    reasons = []
    for need in candidates:
        try:
            path = import_file(need, src, cache_dir)
        except WeightsCommandError as exc:
            reasons.append(str(exc))
            continue
        print(f"imported {src} as {need.label}: {path} ({_size(path)}, sha256 {sha256_of(path)[:16]}...)")
        return 0
    raise WeightsCommandError("nothing imported:\n  " + "\n  ".join(reasons))


def _fetch(needs: List[Need], cache_dir: str, again: str) -> int:
    for need in needs:
        path = find(need, cache_dir)
        if path is None:
            if need.file:
                raise WeightsCommandError(f"{need.setting} = {need.file}: no such file (a local file is not fetched)")
            print(f"{need.kind}: downloading {need.label} from {need.source}", flush=True)
            try:
                path = download(need, cache_dir)
            except WeightsCommandError as exc:
                raise WeightsCommandError(f"{exc}\n{_offline_advice(need, again)}") from exc
        else:
            print(f"{need.kind}: {need.label} already present: {path}")
        print(f"{need.kind}: verifying ({_size(path)})...", flush=True)
        print(f"{need.kind}: {verify(need, path)}")
        found = find(need, cache_dir)
        if found is None or os.path.realpath(found) != os.path.realpath(path):
            raise WeightsCommandError(
                f"{need.label} was stored as {path}, but the nodes' lookup finds {found or 'nothing'} "
                f"(a different cache? set teacher.weights_cache_dir)"
            )
    print("all weights present and verified")
    return 0


def run(args: argparse.Namespace) -> int:
    """Fetch (default), check (``--check``) or import (``--from``) the teacher weights of a configuration."""
    fetching = not args.check and not args.from_file
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if fetching and offline:
        print(
            "HF_HUB_OFFLINE is set in this environment, so nothing can be downloaded: run "
            "`HF_HUB_OFFLINE=0 lerf-ros weights ...`, or use --check / --from",
            file=sys.stderr,
        )
        return 2
    if fetching:
        # The nodes keep the hub client offline; this command is the one place that downloads.
        # (The hub client reads this when it is first imported, which is after this point.)
        os.environ["HF_HUB_OFFLINE"] = "0"
    from lerf_ros.config import ConfigError

    try:
        cfg = _build_config(args)
        needs = needs_of(cfg.teacher)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cache_dir = os.path.expanduser(args.cache_dir or cfg.teacher.weights_cache_dir or "")
    where = cache_dir or "the default caches (HF_HUB_CACHE, ~/.cache/clip, the torch hub folder)"
    print(f"teacher weights of preset '{cfg.preset}' (teacher.kind {cfg.teacher.kind}) in {where}:")
    if not needs:
        why = "random weights" if cfg.teacher.random_weights else f"teacher.kind = {cfg.teacher.kind!r}"
        print(f"  none needed ({why})")
        return 0
    try:
        if args.check:
            return _check(needs, cache_dir, args.verify, _again(args))
        if args.from_file:
            return _import(needs, args, cache_dir)
        return _fetch(needs, cache_dir, _again(args))
    except WeightsCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
