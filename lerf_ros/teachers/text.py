"""The text side of LERF: cached query embeddings, negative phrases and the relevancy score.

Relevancy (Kerr et al. 2023): for a rendered language embedding ``phi``, a query embedding ``q``
and negative phrases ``c_i`` (the canonical "object", "things", "stuff", "texture", plus any the
user gives),

    relevancy = min_i  exp(T phi.q) / (exp(T phi.q) + exp(T phi.c_i))

i.e. the smallest, over the negatives, of the query's probability in a two-way softmax against one
negative. ``T`` multiplies the dot products (an inverse temperature); the reference code uses 10,
which is ``DEFAULT_TEMPERATURE`` and the default of ``QueryConfig.temperature``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Iterable, List, Sequence, Tuple, Union

import torch

CANONICAL_PHRASES: Tuple[str, ...] = ("object", "things", "stuff", "texture")
DEFAULT_TEMPERATURE = 10.0
"""Multiplier of the dot products in the pairwise softmax (the reference code's 10)."""


def relevancy(
    phi: torch.Tensor,
    query: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    return_index: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """LERF relevancy of embeddings to a query against negative phrases.

    Args:
        phi: (N, D) language embeddings (unit rows).
        query: (D,) query text embedding (unit).
        negatives: (M, D) negative phrase embeddings (unit rows), M >= 1.
        temperature: multiplier of the dot products (reference: 10).
        return_index: also return, per row, the negative that attains the minimum.
    Returns:
        (N,) relevancy in (0, 1) (and (N,) long indices into ``negatives`` if ``return_index``).
        Computed as ``sigmoid(T (phi.q - max_i phi.c_i))``: the two-way softmax in a form that
        neither overflows nor underflows to NaN, and its minimum over the negatives taken where
        it is attained (sigmoid is increasing).
    """
    if phi.ndim != 2:
        raise ValueError(f"phi must have shape (N, D), got {tuple(phi.shape)}")
    if query.ndim != 1 or query.shape[0] != phi.shape[1]:
        raise ValueError(f"query must have shape ({phi.shape[1]},), got {tuple(query.shape)}")
    if negatives.ndim != 2 or negatives.shape[1] != phi.shape[1]:
        raise ValueError(f"negatives must have shape (M, {phi.shape[1]}), got {tuple(negatives.shape)}")
    if negatives.shape[0] < 1:
        raise ValueError("relevancy needs at least one negative phrase")
    phi = phi.float()
    q = query.to(phi.device, torch.float32)
    c = negatives.to(phi.device, torch.float32)
    pos = phi @ q  # (N,)
    neg = phi @ c.T  # (N, M)
    # sigmoid is increasing, so the min over negatives of sigmoid(T (pos - neg_i)) is attained at
    # the most similar negative: one sigmoid per row instead of one per pair.
    top, idx = neg.max(dim=1)
    rel = torch.sigmoid(temperature * (pos - top))
    return (rel, idx) if return_index else rel


def negative_phrases(
    user_negatives: Iterable[str] = (), canonical: Sequence[str] = CANONICAL_PHRASES, exclude: Iterable[str] = ()
) -> List[str]:
    """Canonical phrases then user negatives, whitespace-normalised, without duplicates or any
    phrase in ``exclude`` (e.g. the query itself), order kept."""
    skip = {normalize_text(t) for t in exclude}
    out: List[str] = []
    for text in list(canonical) + list(user_negatives):
        key = normalize_text(text)
        if key not in skip and key not in out:
            out.append(key)
    return out


def normalize_text(text: str) -> str:
    """Collapse whitespace; raise ValueError for non-strings and empty text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    key = " ".join(text.split())
    if not key:
        raise ValueError("text is empty")
    return key


class TextEncoderCache:
    """LRU cache of text embeddings in front of a text encoder. Thread-safe.

    ``encoder`` is a ``Teacher`` (its ``encode_text``) or any callable mapping a list of strings to
    an (N, D) tensor of unit rows. Keys are the whitespace-normalised texts.
    """

    def __init__(self, encoder: Union[Callable[[Sequence[str]], torch.Tensor], object], max_size: int = 512) -> None:
        fn = getattr(encoder, "encode_text", encoder)
        if not callable(fn):
            raise TypeError("encoder must be a Teacher or a callable texts -> (N, D) tensor")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._encode = fn
        self.max_size = int(max_size)
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, text: str) -> bool:
        return normalize_text(text) in self._cache

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), D) float32 CPU embeddings; only texts not in the cache are encoded (in one call)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of strings; use query() for one text")
        keys = [normalize_text(t) for t in texts]
        if not keys:
            raise ValueError("no texts to embed")
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
            self.hits += sum(1 for k in keys if k in self._cache)
            self.misses += len(missing)
            fresh = {}
            if missing:
                emb = self._encode(missing)
                if emb.ndim != 2 or emb.shape[0] != len(missing):
                    raise RuntimeError(f"text encoder returned shape {tuple(emb.shape)} for {len(missing)} texts")
                fresh = {k: e for k, e in zip(missing, emb.detach().float().cpu())}
            rows = []
            for k in keys:
                row = fresh.get(k)
                if row is None:
                    row = self._cache[k]
                    self._cache.move_to_end(k)
                rows.append(row)
            for k, e in fresh.items():
                self._cache[k] = e
                self._cache.move_to_end(k)
            while len(self._cache) > self.max_size:
                self._cache.popitem(last=False)
        return torch.stack(rows, dim=0)

    def query(self, text: str) -> torch.Tensor:
        """(D,) embedding of one text."""
        return self.embed([text])[0]

    def negatives(
        self,
        user_negatives: Iterable[str] = (),
        canonical: Sequence[str] = CANONICAL_PHRASES,
        exclude: Iterable[str] = (),
    ) -> torch.Tensor:
        """(M, D) embeddings of ``negative_phrases(user_negatives, canonical, exclude)``."""
        phrases = negative_phrases(user_negatives, canonical, exclude)
        if not phrases:
            raise ValueError("no negative phrases left (all excluded)")
        return self.embed(phrases)
