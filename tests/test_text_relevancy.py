"""The relevancy score and the text embedding cache."""

import math

import pytest
import torch

from lerf_ros.config import LerfConfig
from lerf_ros.teachers.clip import ClipEncoder
from lerf_ros.teachers.text import CANONICAL_PHRASES, DEFAULT_TEMPERATURE, TextEncoderCache, negative_phrases, relevancy

torch.set_num_threads(1)


def _pair(a, b):
    """exp(a) / (exp(a) + exp(b)), written the way the paper writes it."""
    return math.exp(a) / (math.exp(a) + math.exp(b))


def test_relevancy_hand_computed():
    phi = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([1.0, 0.0])
    neg = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    rel, idx = relevancy(phi, q, neg, temperature=10.0, return_index=True)
    # row 0: phi.q = 1, phi.c = (0, 0.6) -> min(pair(10, 0), pair(10, 6)) = pair(10, 6), negative 1
    # row 1: phi.q = 0, phi.c = (1, 0.8) -> min(pair(0, 10), pair(0, 8)) = pair(0, 10), negative 0
    torch.testing.assert_close(rel, torch.tensor([_pair(10, 6), _pair(0, 10)]))
    assert idx.tolist() == [1, 0]


def test_relevancy_matches_the_formula_on_random_embeddings():
    g = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)  # noqa
    phi, q, neg = unit(50, 16), unit(16), unit(6, 16)
    for t in (1.0, DEFAULT_TEMPERATURE, 25.0):
        s_q = torch.exp(t * phi @ q)[:, None]
        s_c = torch.exp(t * phi @ neg.T)
        expect = (s_q / (s_q + s_c)).min(dim=1).values
        torch.testing.assert_close(relevancy(phi.float(), q.float(), neg.float(), temperature=t), expect.float())


def test_relevancy_is_stable_and_default_temperature_is_the_reference():
    assert DEFAULT_TEMPERATURE == 10.0
    assert LerfConfig().query.temperature == DEFAULT_TEMPERATURE
    phi = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    rel = relevancy(phi, torch.tensor([1.0, 0.0]), torch.tensor([[-1.0, 0.0]]), temperature=1e4)
    assert torch.isfinite(rel).all()  # exp(1e4) overflows; the stable form does not
    torch.testing.assert_close(rel, torch.tensor([1.0, 0.0]))


def test_relevancy_rejects_bad_shapes():
    phi = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="query"):
        relevancy(phi, torch.zeros(7), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="negatives"):
        relevancy(phi, torch.zeros(8), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="at least one"):
        relevancy(phi, torch.zeros(8), torch.zeros(0, 8))
    with pytest.raises(ValueError, match="phi"):
        relevancy(torch.zeros(8), torch.zeros(8), torch.zeros(2, 8))


def test_negative_phrases():
    assert CANONICAL_PHRASES == ("object", "things", "stuff", "texture")
    got = negative_phrases(["table", " object ", "red   mug", "table"], exclude=["red mug"])
    assert got == ["object", "things", "stuff", "texture", "table"]


class _Counting:
    """A real (tiny, random-weights) OpenCLIP text encoder that records what it is asked to encode."""

    def __init__(self, enc):
        self.enc = enc
        self.calls = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return self.enc.encode_text(texts)


@pytest.fixture(scope="module")
def tiny_clip():
    return ClipEncoder("test-tiny-vit", random_weights=True, device="cpu")


def test_cache_encodes_each_text_once(tiny_clip):
    enc = _Counting(tiny_clip)
    cache = TextEncoderCache(enc, max_size=8)
    a = cache.embed(["a red mug", "a spoon"])
    b = cache.embed(["a  spoon", "a bowl", "a red mug"])
    assert enc.calls == [["a red mug", "a spoon"], ["a bowl"]]
    torch.testing.assert_close(b[0], a[1])
    torch.testing.assert_close(b[2], a[0])
    torch.testing.assert_close(b, tiny_clip.encode_text(["a spoon", "a bowl", "a red mug"]))
    assert (cache.hits, cache.misses) == (2, 3)
    torch.testing.assert_close(cache.query("a bowl"), b[1])
    assert enc.calls[-1] == ["a bowl"] and len(enc.calls) == 2
    with pytest.raises(ValueError, match="empty"):
        cache.embed(["   "])


def test_cache_evicts_least_recently_used(tiny_clip):
    enc = _Counting(tiny_clip)
    cache = TextEncoderCache(enc, max_size=2)
    cache.embed(["one", "two"])
    cache.query("one")  # "two" is now the least recently used
    cache.query("three")
    assert "one" in cache and "three" in cache and "two" not in cache and len(cache) == 2
    cache.query("two")
    assert enc.calls[-1] == ["two"]


def test_cache_negatives_and_teacher_input(tiny_clip):
    cache = TextEncoderCache(tiny_clip, max_size=16)  # a Teacher-like object: its encode_text is used
    neg = cache.negatives(["table"], exclude=["stuff"])
    assert neg.shape == (4, tiny_clip.embed_dim)
    torch.testing.assert_close(neg, tiny_clip.encode_text(["object", "things", "texture", "table"]))
    rel = relevancy(torch.nn.functional.normalize(torch.randn(10, 32), dim=1), cache.query("mug"), neg)
    assert rel.shape == (10,) and bool(((rel > 0) & (rel < 1)).all())
