"""One tensor of the Open Inference Protocol as a numpy array, in both of the protocol's encodings.

JSON: ``{"name", "datatype", "shape", "data"}``, ``data`` a flat or nested list in row-major order.
Binary (Triton's binary tensor data extension): the tensor's bytes after the request's JSON header,
little-endian and row-major, ``parameters.binary_data_size`` of them; they are read with
``np.frombuffer``, a view with no work per element. A BYTES element is a 4-byte little-endian length
followed by that many bytes.
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import Any

import numpy as np

# The datatypes seqserve reads or writes; the protocol has more (TYPES_KNOWN), which are refused by name.
NUMERIC = {"FP32": np.dtype("<f4"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
TYPES_KNOWN = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
               "FP16", "FP32", "FP64", "BF16", "BYTES")


class TensorError(ValueError):
    """A tensor that cannot be read as declared; the message says what is wrong (the caller names the tensor)."""


def parse_shape(shape: Any) -> tuple[int, ...]:
    """A declared shape as a tuple: a list of whole numbers, none negative."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TensorError(f"shape must be a list of whole numbers, got {short(shape)}")
    if any(d < 0 for d in shape):
        raise TensorError(f"shape {short(shape)} has a negative dimension")
    if any(d >= 2**63 for d in shape):
        raise TensorError(f"shape {short(shape)} has a dimension past INT64's range")
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    """How many elements ``shape`` holds (Python integers: a huge shape cannot overflow)."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def from_json_data(data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """``data`` (flat or nested, row-major) as an array of ``shape``; numbers only, whole ones for INT types."""
    if not isinstance(data, list):
        raise TensorError(f"data must be a list, got {short(data)}")
    try:
        array = np.asarray(data)
    except ValueError:  # numpy refuses nested lists of different lengths
        raise TensorError("data is ragged: its nested lists differ in length") from None
    whole = datatype.startswith("INT")
    if array.dtype.kind == "O" and all(type(v) in (int, float) for v in array.ravel()):  # a whole number past 64 bits
        if whole:
            biggest = max((v for v in array.ravel() if type(v) is int), key=abs)
            raise TensorError(f"data holds {short(biggest)}, outside {datatype}'s range")
        array = np.array([_as_float(v) for v in array.ravel()]).reshape(array.shape)
    if array.dtype.kind not in ("iu" if whole else "iuf"):
        wanted = "whole numbers" if whole else "numbers"
        raise TensorError(f"data must hold only {wanted} for {datatype}, got {_kind(array)}")
    if bool in set(map(type, _leaves(data, array.ndim))):
        # numpy reads true and false among numbers as 1 and 0; /forecast and /classify refuse them too
        raise TensorError(f"data must hold only numbers for {datatype}, got true/false among them")
    if array.size != element_count(shape):
        raise TensorError(f"data has {array.size} values but shape {list(shape)} needs {element_count(shape)}")
    if array.ndim > 1 and not _nested_as(array.shape, shape):
        raise TensorError(f"data is nested as {list(array.shape)}, which does not follow shape {list(shape)}: send it "
                          "flat, or nested as the shape is")
    if whole and array.size:
        bounds = np.iinfo(NUMERIC[datatype])
        low, high = array.min(), array.max()
        if low < bounds.min or high > bounds.max:  # astype would wrap them around
            raise TensorError(f"data holds {short(int(high if high > bounds.max else low))}, outside {datatype}'s range")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf; the caller refuses it with its position
        return array.astype(NUMERIC[datatype], copy=False).reshape(shape)


def _leaves(data: list, depth: int):
    """The values of ``data``, a list nested ``depth`` deep (regular: numpy read it as an array)."""
    for _ in range(depth - 1):
        data = itertools.chain.from_iterable(data)
    return data


def _nested_as(nested: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether data nested as ``nested`` follows ``shape``: its outer levels are the shape's first dimensions and
    its innermost lists hold the rest, flattened ([[60 values]] for [1, 60, 1], as nested as [1, 60, 1] is), or
    it is the shape but for dimensions of 1 ([[1, 2, 3], [4, 5, 6]] for [1, 2, 3])."""
    outer = len(nested) - 1
    prefix = (len(shape) > outer and tuple(nested[:outer]) == tuple(shape[:outer])
              and nested[-1] == element_count(shape[outer:]))
    return prefix or [d for d in nested if d != 1] == [d for d in shape if d != 1]


def from_bytes(raw: memoryview, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """``raw`` (little-endian, row-major) as a read-only array of ``shape``, without copying it."""
    dtype = NUMERIC[datatype]
    needed = element_count(shape) * dtype.itemsize
    if len(raw) != needed:
        raise TensorError(f"binary_data_size is {len(raw)} bytes but shape {list(shape)} of {datatype} needs {needed}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_json(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    """An output tensor with its values as a flat JSON list."""
    data = [str(item) for item in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def to_binary(name: str, datatype: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """An output tensor's JSON description, and its bytes to send after the JSON header."""
    if datatype == "BYTES":
        encoded = [str(item).encode() for item in array.ravel()]
        raw = b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    else:
        raw = np.ascontiguousarray(array, dtype=NUMERIC[datatype]).tobytes()
    head = {"name": name, "datatype": datatype, "shape": list(array.shape), "parameters": {"binary_data_size": len(raw)}}
    return head, raw


def _as_float(value: int | float) -> float:
    """A number as a float; one past float64's range as an infinity (refused later, with its position)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _kind(array: np.ndarray) -> str:
    return {"b": "true/false", "U": "strings", "O": "mixed values or nulls", "f": "fractions"}.get(array.dtype.kind, str(array.dtype))


def short(value: Any, limit: int = 40) -> str:
    """``value`` as it may be echoed in an error: its repr (JSON's words for null, true and false), cut short when long."""
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
