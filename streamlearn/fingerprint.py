"""A model's fingerprint: a hash of its whole state, equal exactly when every weight is equal bit
for bit.

A pickle's bytes are no such hash: they depend on which objects happen to be shared (pickle
writes a second reference to a string as a back-reference) and on a dict's insertion order, so
two models with the same weights, one restored from a snapshot and learned on, one learned live,
can pickle differently. The fingerprint walks the object graph instead, the way pickle sees it
(``__reduce_ex__``: what an object says its state is), and feeds a canonical form to SHA-256:
floats as their 8 IEEE-754 bytes (never a rounded repr: ``0.1 + 0.2`` and ``0.3`` differ), dicts
and sets sorted by their keys' canonical form, NumPy arrays as dtype, shape and raw bytes,
random generators as their full state, pydantic models (a model's spec) as their fields'
values, classes and functions by qualified name.

>>> fingerprint({"a": 0.1 + 0.2}) == fingerprint({"a": 0.3})
False
>>> fingerprint({"a": 1.0, "b": [2.0]}) == fingerprint({"b": [2.0], "a": 1.0})
True
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import deque
from types import (
    BuiltinFunctionType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    WrapperDescriptorType,
)
from typing import Any

import numpy as np
from pydantic import BaseModel

_CODE = (
    type,
    FunctionType,
    BuiltinFunctionType,
    MethodType,
    MethodWrapperType,
    MethodDescriptorType,
    WrapperDescriptorType,
)


def fingerprint(obj: Any) -> str:
    """The SHA-256 of ``obj``'s canonical form, in hex."""
    return hashlib.sha256(_canonical(obj, set())).hexdigest()


def _name(t: Any) -> bytes:
    return f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', repr(t))}".encode()


def _frame(tag: bytes, *parts: bytes) -> bytes:
    """``tag`` and each part behind its length: no two different forms run together."""
    return tag + b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def _canonical(obj: Any, path: set[int]) -> bytes:
    if obj is None or isinstance(obj, bool):
        return _frame(b"c", repr(obj).encode())
    if isinstance(obj, int):
        return _frame(b"i", str(obj).encode())
    if isinstance(obj, float):
        return _frame(b"f", struct.pack(">d", obj))
    if isinstance(obj, str):
        return _frame(b"s", obj.encode("utf-8", "surrogatepass"))
    if isinstance(obj, bytes | bytearray):
        return _frame(b"b", bytes(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return _frame(b"o", str(obj.shape).encode(), *(_canonical(v, path) for v in obj.flat))
        return _frame(b"a", obj.dtype.str.encode(), str(obj.shape).encode(), obj.tobytes())
    if isinstance(obj, np.generic):
        return _frame(b"n", obj.dtype.str.encode(), obj.tobytes())
    if isinstance(obj, _CODE):  # code, not state
        return _frame(b"t", _name(obj))
    if id(obj) in path:  # a cycle: the object is being written further up
        return _frame(b"r", _name(type(obj)))
    path.add(id(obj))
    try:
        return _container(obj, path)
    finally:
        path.discard(id(obj))


def _container(obj: Any, path: set[int]) -> bytes:
    kind = _name(type(obj))
    if isinstance(obj, dict):
        items = sorted((_canonical(k, path), _canonical(v, path)) for k, v in obj.items())
        extra = _canonical(obj.default_factory, path) if hasattr(obj, "default_factory") else b""
        return _frame(b"d", kind, extra, *(k + v for k, v in items))
    if isinstance(obj, set | frozenset):
        return _frame(b"e", kind, *sorted(_canonical(v, path) for v in obj))
    if isinstance(obj, list | tuple | deque):
        maxlen = str(obj.maxlen).encode() if isinstance(obj, deque) else b""
        return _frame(b"l", kind, maxlen, *(_canonical(v, path) for v in obj))
    if isinstance(obj, random.Random):
        return _frame(b"g", kind, _canonical(obj.getstate(), path))
    if isinstance(obj, BaseModel):  # a spec: its fields' values, not which were given
        return _frame(b"m", kind, _canonical(obj.model_dump(), path))
    if isinstance(obj, np.random.Generator):
        return _frame(b"g", kind, _canonical(obj.bit_generator.state, path))
    if isinstance(obj, np.random.RandomState):
        return _frame(b"g", kind, _canonical(obj.get_state(), path))
    # Anything else as pickle sees it: its class and the state it says it has.
    reduced = obj.__reduce_ex__(4)
    if isinstance(reduced, str):  # a global, by name
        return _frame(b"t", reduced.encode())
    parts = [_canonical(v, path) for v in reduced[1:3]]
    for rest in reduced[3:5]:
        if rest is not None:
            parts.append(_canonical(list(rest), path))
    return _frame(b"x", kind, *parts)
