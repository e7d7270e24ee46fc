"""The object vocabulary: 27 everyday tabletop classes, their synonyms and mesh builders.

Each class's ``build(rng, s)`` returns the object's parts (:class:`~.shapes.Part`, object-local
frame, resting on z = 0) at size factor ``s``; colours are drawn from ``rng``, so the same
generator state gives the same object. :func:`normalize_phrase` is how class names and synonyms
are matched against query text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from lerf_ros.data.synthetic.shapes import Material, Part, box, ellipsoid, hex_color, lathe, pick_color, shade, tube

__all__ = ["ObjectClass", "VOCABULARY", "CLASS_BY_NAME", "normalize_phrase"]

_ARTICLES = ("a ", "an ", "the ", "some ")


def normalize_phrase(text: str) -> str:
    """Lower-case, trim, collapse white space, drop a leading article and trailing punctuation.

    ``"  The Coffee  Mug. "`` -> ``"coffee mug"``. Used to match class names and synonyms.
    """
    t = " ".join(str(text).lower().replace("_", " ").split())
    t = t.strip(" .,;:!?\"'")
    for art in _ARTICLES:
        if t.startswith(art):
            t = t[len(art) :].strip()
            break
    return t


@dataclass(frozen=True)
class ObjectClass:
    """A vocabulary class: its name, synonyms (other phrases meaning it) and a mesh builder
    ``build(rng, s) -> [Part]`` producing the object at size factor ``s`` (about 1)."""

    name: str
    synonyms: Tuple[str, ...]
    build: Callable[[np.random.Generator, float], List[Part]] = field(repr=False, compare=False)
    description: str = ""

    def phrases(self) -> Tuple[str, ...]:
        """The class name followed by its synonyms."""
        return (self.name,) + tuple(self.synonyms)


def _mug(rng, s):
    col = pick_color(rng, ["#d8d8d0", "#2f5fa8", "#b83232", "#2d8a57", "#e0b030"])
    mat = Material(col, shade(col, 0.55), "stripes", 0.018 * s, axis=2)
    R, h, w = 0.040 * s, 0.095 * s, 0.006 * s
    body = lathe([R, R, R - w, R - w], [0, h, h, 0.008 * s], mat)
    th = np.linspace(-np.pi / 2, np.pi / 2, 14)
    hr = 0.032 * s
    curve = np.stack([R - 0.004 * s + hr * 0.9 * np.cos(th), np.zeros_like(th), h / 2 + hr * np.sin(th)], -1)
    handle = tube(curve, np.full(len(th), 0.0065 * s), (0, 1, 0), Material(col))
    return [body, handle]


def _banana(rng, s):
    L, Rb = 0.19 * s, 0.12 * s
    a = np.linspace(-L / (2 * Rb), L / (2 * Rb), 24)
    curve = np.stack([Rb * np.sin(a), Rb * (1 - np.cos(a)), np.full_like(a, 0.02 * s)], -1)
    u = np.linspace(0, 1, 24)
    radii = 0.018 * s * np.clip(np.sin(np.pi * u) ** 0.45, 0.18, 1)
    radii[0] = radii[-1] = 0.0
    yellow = pick_color(rng, ["#f2d43a", "#e8c82c", "#f5dc55"])
    return [tube(curve, radii, (0, 0, 1), Material(yellow, shade(yellow, 0.8), "stripes", 0.05 * s, 0), 14)]


def _book(rng, s):
    col = pick_color(rng, ["#7a1f2b", "#1f3f7a", "#2b6b3a", "#5a3a7a", "#c06020"])
    sx, sy, sz = 0.21 * s, 0.15 * s, 0.032 * s
    cover = box((sx, sy, sz * 0.25), Material(col, shade(col, 1.5), "stripes", 0.035 * s, 0), (0, 0, sz * 0.875))
    pages = box(
        (sx * 0.97, sy * 0.97, sz * 0.6),
        Material(hex_color("#efe8d4"), hex_color("#d6ceb8"), "stripes", 0.004 * s, 2),
        (0, 0, sz * 0.45),
    )
    back = box((sx, sy, sz * 0.15), Material(col), (0, 0, sz * 0.075))
    return [cover, pages, back]


def _bowl(rng, s):
    col = pick_color(rng, ["#f0ece0", "#5b87b5", "#c75f3f", "#8fb86a"])
    R, h, w = 0.08 * s, 0.06 * s, 0.005 * s
    ph = np.linspace(0, np.pi / 2, 8)
    r_out = 0.035 * s + (R - 0.035 * s) * np.sin(ph)
    z_out = h * (1 - np.cos(ph))
    r = np.concatenate([[0.0], r_out, r_out[::-1][:-1] - w, [0.0]])
    z = np.concatenate([[0.0], z_out, z_out[::-1][:-1] + w, [w]])
    return [lathe(r, z, Material(col, shade(col, 0.7), "rings", 0.02 * s), caps=False)]


def _bottle(rng, s):
    col = pick_color(rng, ["#4aa3d8", "#3c8c4a", "#9ad0e8", "#d04a3a"])
    R, H = 0.035 * s, 0.22 * s
    body = lathe(
        [R, R, R * 0.95, R * 0.45, R * 0.38, R * 0.38],
        [0, 0.62 * H, 0.70 * H, 0.84 * H, 0.88 * H, 0.93 * H],
        Material(col, shade(col, 0.6), "stripes", 0.03 * s, 2),
    )
    cap = lathe([R * 0.42, R * 0.42], [0.93 * H, H], Material(pick_color(rng, ["#f4f4f4", "#202020", "#2050c0"])))
    return [body, cap]


def _phone(rng, s):
    col = pick_color(rng, ["#202226", "#c8c8cc", "#2a3550"])
    sx, sy, sz = 0.15 * s, 0.074 * s, 0.009 * s
    return [
        box((sx, sy, sz), Material(col), (0, 0, sz / 2)),
        box(
            (sx * 0.9, sy * 0.86, 0.0015),
            Material(hex_color("#0d1b3a"), hex_color("#2a5aa0"), "stripes", 0.02 * s, 0),
            (0, 0, sz + 0.00075),
        ),
    ]


def _apple(rng, s):
    col = pick_color(rng, ["#c0282a", "#a81e2e", "#8cbf3a"])
    r = 0.04 * s
    body = ellipsoid((r, r, r * 0.88), Material(col, shade(col, 0.82), "stripes", 0.012 * s, 2))
    stem = lathe([0.003 * s, 0.003 * s], [1.7 * r, 2.1 * r], Material(hex_color("#5a3a1a")))
    return [body, stem]


def _scissors(rng, s):
    col = pick_color(rng, ["#e03030", "#2050c0", "#202020", "#f08020"])
    steel = Material(hex_color("#b8bcc4"), hex_color("#8a8e96"), "stripes", 0.02 * s, 0)
    parts = []
    for sign in (-1, 1):
        yaw = sign * 0.16
        parts.append(
            box(
                (0.10 * s, 0.012 * s, 0.004 * s),
                steel,
                (0.045 * s * math.cos(yaw), 0.045 * s * math.sin(yaw), 0.002 * s + (sign > 0) * 0.004 * s),
                yaw,
            )
        )
        th = np.linspace(0, 2 * np.pi, 20)
        c = np.array([-0.04 * s, sign * 0.022 * s, 0.005 * s])
        ring = c + np.stack([0.018 * s * np.cos(th), 0.014 * s * np.sin(th), np.zeros_like(th)], -1)
        parts.append(tube(ring, np.full(len(th), 0.004 * s), (0, 0, 1), Material(col), 10))
    return parts


def _orange(rng, s):
    col = pick_color(rng, ["#f08a1c", "#f59a2a", "#e87c10"])
    r = 0.04 * s
    return [ellipsoid((r, r, r * 0.95), Material(col, shade(col, 0.85), "checker", 0.01 * s))]


def _soda_can(rng, s):
    col = pick_color(rng, ["#d0202a", "#1e4fa0", "#20a050", "#c0c0c8"])
    R, H = 0.033 * s, 0.122 * s
    body = lathe(
        [R * 0.85, R, R, R * 0.85],
        [0, 0.01 * s, H - 0.01 * s, H],
        Material(col, hex_color("#f2f2f2"), "stripes", 0.025 * s, 2),
    )
    return [body]


def _tennis_ball(rng, s):
    r = 0.033 * s
    return [ellipsoid((r, r, r), Material(hex_color("#d4e84a"), hex_color("#f4f4e8"), "stripes", 0.03 * s, 0))]


def _plate(rng, s):
    col = pick_color(rng, ["#f4f2ec", "#e8e0cc", "#a8c8e0"])
    R, H = 0.12 * s, 0.02 * s
    return [
        lathe(
            [0.07 * s, R, R, 0.08 * s, 0.0],
            [0, H, H, 0.006 * s, 0.006 * s],
            Material(col, shade(col, 0.75), "rings", 0.025 * s),
        )
    ]


def _cereal_box(rng, s):
    col = pick_color(rng, ["#e8c020", "#d04020", "#3070c0", "#40a040"])
    sx, sy, sz = 0.19 * s, 0.07 * s, 0.27 * s
    return [box((sx, sy, sz), Material(col, hex_color("#f4f0e0"), "checker", 0.045 * s), (0, 0, sz / 2))]


def _remote(rng, s):
    sx, sy, sz = 0.17 * s, 0.05 * s, 0.02 * s
    return [
        box((sx, sy, sz), Material(hex_color("#1c1c1e")), (0, 0, sz / 2)),
        box(
            (sx * 0.7, sy * 0.6, 0.003 * s),
            Material(hex_color("#606068"), hex_color("#c03030"), "checker", 0.012 * s),
            (0.01 * s, 0, sz + 0.0015 * s),
        ),
    ]


def _rubiks_cube(rng, s):
    a = 0.057 * s
    return [box((a, a, a), Material(hex_color("#e02020"), hex_color("#f0f0f0"), "checker", a / 3), (0, 0, a / 2))]


def _mouse(rng, s):
    col = pick_color(rng, ["#303034", "#d8d8dc", "#8a8a90"])
    e = ellipsoid((0.058 * s, 0.032 * s, 0.036 * s), Material(col, shade(col, 0.7), "stripes", 0.03 * s, 0))
    e.vertices[:, 2] = np.maximum(e.vertices[:, 2] - 0.004 * s, 0.0)
    return [e]


def _candle(rng, s):
    col = pick_color(rng, ["#f4ecd8", "#e8c8d0", "#d8e8f0"])
    R, H = 0.035 * s, 0.10 * s
    return [
        lathe([R, R, R * 0.9], [0, H, H], Material(col, shade(col, 0.9), "stripes", 0.015 * s, 2)),
        lathe([0.0025 * s, 0.0025 * s], [H, H + 0.012 * s], Material(hex_color("#202020"))),
    ]


def _vase(rng, s):
    col = pick_color(rng, ["#3a6ea8", "#a83a5a", "#d8d0b8", "#3a8a7a"])
    z = np.array([0, 0.02, 0.07, 0.12, 0.16, 0.20, 0.22]) * s
    r = np.array([0.04, 0.05, 0.06, 0.05, 0.03, 0.032, 0.036]) * s
    return [lathe(r, z, Material(col, hex_color("#f0e8d0"), "stripes", 0.025 * s, 2))]


def _lemon(rng, s):
    u = np.linspace(0, 1, 16)
    L, r = 0.085 * s, 0.028 * s
    radii = r * np.sqrt(np.clip(1 - (2 * u - 1) ** 2, 0, 1)) * (1 - 0.25 * (2 * u - 1) ** 8)
    curve = np.stack([(u - 0.5) * L, np.zeros_like(u), np.full_like(u, r)], -1)
    return [
        tube(curve, radii, (0, 0, 1), Material(hex_color("#f4e040"), hex_color("#e4d030"), "checker", 0.008 * s), 18)
    ]


def _egg(rng, s):
    u = np.linspace(0, 1, 16)
    L, r = 0.06 * s, 0.022 * s
    radii = r * np.sqrt(np.clip(1 - (2 * u - 1) ** 2, 0, 1)) * (1 + 0.18 * (2 * u - 1))
    curve = np.stack([(u - 0.5) * L, np.zeros_like(u), np.full_like(u, r * 1.15)], -1)
    col = pick_color(rng, ["#f4eee0", "#e0c8a0"])
    return [tube(curve, radii, (0, 0, 1), Material(col, shade(col, 0.93), "checker", 0.01 * s), 18)]


def _marker(rng, s):
    col = pick_color(rng, ["#e02020", "#2040d0", "#20a040", "#202020", "#f0c020"])
    r, L = 0.009 * s, 0.13 * s
    x = np.linspace(-L / 2, 0.25 * L, 6)
    body = tube(
        np.stack([x, 0 * x, np.full_like(x, r)], -1),
        np.full(6, r),
        (0, 0, 1),
        Material(hex_color("#f0f0f0"), col, "stripes", 0.03 * s, 0),
        12,
    )
    xc = np.linspace(0.25 * L, L / 2, 4)
    cap = tube(
        np.stack([xc, 0 * xc, np.full_like(xc, r)], -1),
        np.r_[r * 1.1, r * 1.1, r * 1.1, r * 0.5],
        (0, 0, 1),
        Material(col),
        12,
    )
    return [body, cap]


def _stapler(rng, s):
    col = pick_color(rng, ["#202020", "#c02020", "#2040a0"])
    return [
        box((0.16 * s, 0.04 * s, 0.018 * s), Material(hex_color("#505058")), (0, 0, 0.009 * s)),
        box(
            (0.15 * s, 0.034 * s, 0.024 * s),
            Material(col, shade(col, 1.6), "stripes", 0.04 * s, 0),
            (0.005 * s, 0, 0.032 * s),
        ),
    ]


def _sponge(rng, s):
    col = pick_color(rng, ["#f4d030", "#f09030", "#e86080"])
    sx, sy = 0.10 * s, 0.068 * s
    return [
        box((sx, sy, 0.022 * s), Material(col, shade(col, 0.85), "checker", 0.008 * s), (0, 0, 0.011 * s)),
        box((sx, sy, 0.008 * s), Material(hex_color("#2a7a3a")), (0, 0, 0.026 * s)),
    ]


def _teapot(rng, s):
    col = pick_color(rng, ["#f0f0ec", "#2a5a9a", "#b04030", "#6a8a5a"])
    mat = Material(col, shade(col, 0.7), "stripes", 0.02 * s, 2)
    z = np.array([0, 0.01, 0.04, 0.08, 0.11, 0.12]) * s
    r = np.array([0.045, 0.06, 0.07, 0.062, 0.035, 0.0]) * s
    body = lathe(r, z, mat)
    t = np.linspace(0, 1, 8)
    spout = tube(
        np.stack([0.055 * s + 0.05 * s * t, 0 * t, 0.04 * s + 0.055 * s * t**1.3], -1),
        0.012 * s * (1 - 0.5 * t),
        (0, 1, 0),
        Material(col),
        10,
    )
    th = np.linspace(-np.pi / 2, np.pi / 2, 12)
    handle = tube(
        np.stack([-0.062 * s - 0.03 * s * np.cos(th), 0 * th, 0.065 * s + 0.03 * s * np.sin(th)], -1),
        np.full(len(th), 0.006 * s),
        (0, 1, 0),
        Material(col),
        10,
    )
    knob = ellipsoid((0.012 * s, 0.012 * s, 0.01 * s), Material(shade(col, 0.6)), z0=0.115 * s)
    return [body, spout, handle, knob]


def _tape(rng, s):
    col = pick_color(rng, ["#a0a0a8", "#e0c040", "#3060c0", "#d0d0c0"])
    Ro, Ri, H = 0.05 * s, 0.036 * s, 0.048 * s
    core = Material(hex_color("#b89868"))
    return [
        lathe(
            [Ro, Ro, Ri + 0.006 * s, Ri + 0.006 * s, Ro],
            [0, H, H, 0, 0],
            Material(col, shade(col, 0.8), "rings", 0.005 * s),
            caps=False,
        ),
        lathe([Ri + 0.006 * s, Ri + 0.006 * s, Ri, Ri, Ri + 0.006 * s], [0, H, H, 0, 0], core, caps=False),
    ]


def _potted_plant(rng, s):
    pot = pick_color(rng, ["#b8603a", "#d8d0c0", "#404448"])
    return [
        lathe(
            [0.045 * s, 0.06 * s, 0.06 * s, 0.052 * s],
            [0, 0.10 * s, 0.10 * s, 0.095 * s],
            Material(pot, shade(pot, 0.8), "stripes", 0.02 * s, 2),
        ),
        ellipsoid(
            (0.075 * s, 0.075 * s, 0.07 * s),
            Material(hex_color("#3a8a3a"), hex_color("#205a20"), "checker", 0.015 * s),
            z0=0.085 * s,
        ),
    ]


def _pear(rng, s):
    col = pick_color(rng, ["#b8c83a", "#d8c040", "#98b030"])
    ph = np.linspace(0, np.pi, 18)
    z = 0.10 * s * (1 - np.cos(ph)) / 2
    u = z / (0.10 * s)
    r = np.sin(ph) * (0.042 * s * (1 - u) + 0.024 * s * u) * (1 + 0.25 * np.sin(np.pi * u) ** 2)
    body = lathe(r, z, Material(col, shade(col, 0.85), "checker", 0.01 * s), caps=False)
    stem = lathe([0.0025 * s, 0.0025 * s], [0.098 * s, 0.115 * s], Material(hex_color("#5a3a1a")))
    return [body, stem]


VOCABULARY: Tuple[ObjectClass, ...] = (
    ObjectClass("mug", ("cup", "coffee mug", "coffee cup", "tea cup"), _mug, "cylinder with a handle"),
    ObjectClass("banana", ("bananas",), _banana, "bent tapered tube"),
    ObjectClass("book", ("novel", "hardcover book", "textbook"), _book, "flat box with pages"),
    ObjectClass("bowl", ("cereal bowl", "salad bowl", "soup bowl"), _bowl, "hollow lathed bowl"),
    ObjectClass("bottle", ("water bottle", "plastic bottle"), _bottle, "lathed bottle with cap"),
    ObjectClass("phone", ("smartphone", "cell phone", "mobile phone", "iphone"), _phone, "thin box with screen"),
    ObjectClass("apple", ("red apple", "green apple"), _apple, "ellipsoid with stem"),
    ObjectClass("scissors", ("pair of scissors", "shears"), _scissors, "two blades and two rings"),
    ObjectClass("orange", ("orange fruit", "tangerine", "mandarin"), _orange, "ellipsoid, dimpled texture"),
    ObjectClass("soda can", ("can", "coke can", "drink can", "beer can", "tin can"), _soda_can, "short cylinder"),
    ObjectClass("tennis ball", ("ball",), _tennis_ball, "sphere"),
    ObjectClass("plate", ("dinner plate", "dish"), _plate, "flat lathed disc"),
    ObjectClass("cereal box", ("box", "cardboard box", "cereal"), _cereal_box, "tall box"),
    ObjectClass("remote control", ("remote", "tv remote"), _remote, "thin long box with buttons"),
    ObjectClass("rubik's cube", ("rubiks cube", "cube", "puzzle cube"), _rubiks_cube, "checkered cube"),
    ObjectClass("computer mouse", ("mouse",), _mouse, "half ellipsoid"),
    ObjectClass("candle", ("pillar candle", "wax candle"), _candle, "cylinder with wick"),
    ObjectClass("vase", ("flower vase",), _vase, "lathed vase"),
    ObjectClass("lemon", ("lime",), _lemon, "lying ellipsoid"),
    ObjectClass("egg", ("chicken egg",), _egg, "lying egg shape"),
    ObjectClass("marker", ("pen", "felt-tip pen", "highlighter"), _marker, "thin lying tube with cap"),
    ObjectClass("stapler", ("office stapler",), _stapler, "two stacked boxes"),
    ObjectClass("sponge", ("kitchen sponge", "scrubber"), _sponge, "two-layer box"),
    ObjectClass("teapot", ("tea pot", "kettle"), _teapot, "lathed pot with spout and handle"),
    ObjectClass("tape", ("roll of tape", "tape roll", "duct tape"), _tape, "ring"),
    ObjectClass("potted plant", ("plant", "house plant", "flower pot"), _potted_plant, "pot with foliage"),
    ObjectClass("pear", ("green pear",), _pear, "lathed pear"),
)


def _check_vocabulary(vocab: Sequence[ObjectClass]) -> None:
    """Raise ValueError when one phrase (after :func:`normalize_phrase`) names two classes."""
    seen: Dict[str, str] = {}
    for cls in vocab:
        for p in cls.phrases():
            key = normalize_phrase(p)
            if key in seen and seen[key] != cls.name:
                raise ValueError(f"phrase '{p}' names both '{seen[key]}' and '{cls.name}'")
            seen[key] = cls.name


_check_vocabulary(VOCABULARY)
CLASS_BY_NAME: Dict[str, ObjectClass] = {c.name: c for c in VOCABULARY}
"""The vocabulary by class name."""
