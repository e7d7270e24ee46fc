"""Field descriptions of the config dataclasses, read from their attribute docstrings.

Used to give every ROS parameter and CLI option the same description as the config field it sets.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from typing import Dict


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """{field name: the string literal that follows its definition in the class body}."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: Dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def dotted_docs(cfg: object, prefix: str = "") -> Dict[str, str]:
    """{dotted key: description} for every leaf field of a nested config dataclass instance."""
    out: Dict[str, str] = {}
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(dotted_docs(value, key + "."))
        else:
            out[key] = docs.get(f.name, "")
    return out
