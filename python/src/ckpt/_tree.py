"""Python values <-> the flat pre-order value tree of ckpt.v1 (internal).

The encoding is the C++ client's (client/torch_tree.cc) and the CLI's
(interop/torch_pt.cc), so versions move freely between Python, C++ and .pt files:

- a tensor (or ``nn.Parameter``) is a TensorMeta: dtype, shape, the device it was
  saved on (``str(tensor.device)``), ``requires_grad``; its bytes contiguous,
  row-major, in the machine's (little-endian) byte order;
- dict and OrderedDict (str or int keys, order kept), list, tuple (and
  ``torch.Size``), None, bool, int (64-bit), float, str, bytes.

On load a dict is an ``OrderedDict`` when every value is a tensor (a state_dict,
which is what ``torch.load`` returns for ``module.state_dict()``) and a plain
``dict`` otherwise (``ckpt export`` writes the same); a tensor saved with
``requires_grad`` comes back as an ``nn.Parameter``.
"""

from __future__ import annotations

import collections
import gc
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ckpt import _wire
from ckpt.v1 import checkpoint_pb2 as pb

# torch dtype <-> ckpt.v1.DType. uint16/32/64 exist in torch >= 2.3 only.
_DTYPES: List[Tuple[str, int]] = [
    ("float32", pb.DTYPE_FLOAT32),
    ("float64", pb.DTYPE_FLOAT64),
    ("float16", pb.DTYPE_FLOAT16),
    ("bfloat16", pb.DTYPE_BFLOAT16),
    ("int8", pb.DTYPE_INT8),
    ("int16", pb.DTYPE_INT16),
    ("int32", pb.DTYPE_INT32),
    ("int64", pb.DTYPE_INT64),
    ("uint8", pb.DTYPE_UINT8),
    ("bool", pb.DTYPE_BOOL),
    ("complex64", pb.DTYPE_COMPLEX64),
    ("complex128", pb.DTYPE_COMPLEX128),
    ("uint16", pb.DTYPE_UINT16),
    ("uint32", pb.DTYPE_UINT32),
    ("uint64", pb.DTYPE_UINT64),
]
TO_PB: Dict[torch.dtype, int] = {}
FROM_PB: Dict[int, torch.dtype] = {}
for _name, _code in _DTYPES:
    _dt = getattr(torch, _name, None)
    if isinstance(_dt, torch.dtype):
        TO_PB[_dt] = _code
        FROM_PB[_code] = _dt

# Bytes per element of each ckpt.v1.DType (also those this torch lacks).
_DTYPE_SIZES = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT64: 8, pb.DTYPE_FLOAT16: 2,
                pb.DTYPE_BFLOAT16: 2, pb.DTYPE_INT8: 1, pb.DTYPE_INT16: 2, pb.DTYPE_INT32: 4,
                pb.DTYPE_INT64: 8, pb.DTYPE_UINT8: 1, pb.DTYPE_BOOL: 1, pb.DTYPE_COMPLEX64: 8,
                pb.DTYPE_COMPLEX128: 16, pb.DTYPE_UINT16: 2, pb.DTYPE_UINT32: 4,
                pb.DTYPE_UINT64: 8}


def dtype_size(code: int) -> int:
    """Bytes per element of a ckpt.v1.DType (0 if unknown)."""
    return _DTYPE_SIZES.get(code, 0)


MAX_DEPTH = 128
MAX_INLINE_STRING = 64 * 1024
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

#: Data of a node: ready bytes (memoryview of uint8) or a CPU tensor made
#: contiguous only when its batch is sent (bounds the memory of copies).
Data = Union[memoryview, torch.Tensor, None]


def key_text(key: Union[str, int, None], index: int) -> str:
    if key is None:
        return str(index)
    return str(key)


def join(path: str, part: str) -> str:
    return part if not path else f"{path}/{part}"


# dtypes whose numpy arrays memoryview can cast to bytes directly (fast path).
_NUMPY_NATIVE = {torch.float32, torch.float64, torch.float16, torch.int8, torch.int16,
                 torch.int32, torch.int64, torch.uint8, torch.bool}


# Real dtypes numpy views directly (no conj bit possible).
_VIEW_FAST = _NUMPY_NATIVE


def tensor_bytes(tensor: torch.Tensor) -> Tuple[memoryview, torch.Tensor]:
    """A uint8 memoryview of a CPU tensor's elements (contiguous; copied only if it
    is not), and the tensor that owns that memory (keep it alive)."""
    t = tensor.detach()
    if t.is_complex() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b""), t
    if t.dtype in _NUMPY_NATIVE and t.dim():
        return memoryview(t.numpy()).cast("B"), t
    flat = t.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()), t


class Entry:
    """One node of a flattened value: what its protobuf Node will say, and its data."""

    __slots__ = ("key", "kind", "value", "size", "dtype", "shape", "device", "requires_grad",
                 "data")

    def __init__(self, key: Union[str, int, None], kind: str, value: Any = None) -> None:
        self.key = key
        self.kind = kind  # dict list tuple none bool int float str tensor bytes
        self.value = value  # scalar value, or the number of children of a container
        self.size = 0  # data bytes (tensor, bytes)
        self.dtype = 0
        self.shape: Sequence[int] = ()
        self.device = ""
        self.requires_grad = False
        self.data: Data = None

    def fill(self, node: pb.Node) -> Optional[pb.DataRef]:
        """Writes this entry into ``node``; returns its DataRef (tensor, bytes) or None."""
        key = self.key
        if key is not None:
            if isinstance(key, str):  # a str subclass (a str Enum) too: its text
                node.str_key = key
            else:
                node.int_key = key
        kind = self.kind
        if kind == "tensor":
            meta = node.tensor
            meta.dtype = self.dtype
            meta.shape.extend(self.shape)
            meta.device = self.device
            if self.requires_grad:
                meta.requires_grad = True
            ref = meta.data
            ref.size = self.size
            return ref
        if kind == "bytes":
            ref = node.bytes.data
            ref.size = self.size
            return ref
        if kind == "dict":
            node.dict.size = self.value
        elif kind == "list":
            node.list.size = self.value
        elif kind == "tuple":
            node.tuple.size = self.value
        elif kind == "none":
            node.none.SetInParent()
        elif kind == "bool":
            node.bool_value = self.value
        elif kind == "int":
            node.int_value = self.value
        elif kind == "float":
            node.float_value = self.value
        else:
            node.string_value = self.value
        return None


class Flat:
    """A value flattened for a save: its nodes in pre-order."""

    def __init__(self) -> None:
        self.entries: List[Entry] = []
        # A snapshot's buffer (flatten with snapshot): every tensor's copy.
        self.snapshot: Optional[torch.Tensor] = None

    @property
    def data_bytes(self) -> int:
        return sum(e.size for e in self.entries)


class SnapshotBuffers:
    """Host buffers that snapshots copy into, kept across saves: a reused
    buffer's pages are mapped already, so the next snapshot copies at memory
    speed. At most ``IDLE`` idle buffers (the largest) are kept. Thread-safe."""

    IDLE = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: List[torch.Tensor] = []

    def take(self, nbytes: int, pinned: bool) -> torch.Tensor:
        """A uint8 buffer of at least ``nbytes``: the smallest idle one that
        fits, or a new one."""
        with self._lock:
            fits = [b for b in self._idle if b.is_pinned() == pinned and b.numel() >= nbytes]
            if fits:
                best = min(fits, key=lambda b: b.numel())
                self._idle = [b for b in self._idle if b is not best]
                return best
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)

    def give(self, buffer: Optional[torch.Tensor]) -> None:
        if buffer is None:
            return
        with self._lock:
            self._idle.append(buffer)
            self._idle.sort(key=lambda b: -b.numel())
            del self._idle[self.IDLE:]

    def release(self) -> None:
        with self._lock:
            self._idle = []

    def idle_bytes(self) -> int:
        with self._lock:
            return sum(b.numel() for b in self._idle)


_ALIGN = 64


def _copy_snapshot(flat: Flat, buffers: Optional[SnapshotBuffers]) -> None:
    """Copies every tensor entry's data into one buffer from ``buffers``
    (pinned if a tensor is on a device) and points the entries at it."""
    tensors = [e for e in flat.entries if e.kind == "tensor"]
    total = sum((e.size + _ALIGN - 1) // _ALIGN * _ALIGN for e in tensors)
    on_device = any(not e.data.is_cpu for e in tensors)
    buffer = (buffers or SnapshotBuffers()).take(total, on_device and torch.cuda.is_available())
    flat.snapshot = buffer
    view = memoryview(buffer.numpy())
    off = 0
    # Contiguous CPU tensors are copied together, in C without the GIL when
    # the accelerator is built (one call: ~1 us per tensor less than a
    # memoryview each); the others through torch.
    plain: List[Tuple[int, int, int]] = []
    sources: List[torch.Tensor] = []  # alive until copied (entries now point at dst)
    for e in tensors:
        t = e.data
        n = e.size
        dst = view[off:off + n]
        if n:
            if holds_its_values(t):
                plain.append((t.data_ptr(), off, n))
                sources.append(t)
            else:
                with torch.no_grad():
                    torch.frombuffer(dst, dtype=t.dtype).view(t.shape).copy_(t)
        e.data = dst
        off += (n + _ALIGN - 1) // _ALIGN * _ALIGN
    _wire.copy_into(view, plain)
    del sources


def flatten(value: Any, snapshot: bool = False,
            buffers: Optional[SnapshotBuffers] = None) -> Flat:
    """Flattens ``value`` for a save.

    Tensors on the CPU are referenced in place (made contiguous when sent) unless
    ``snapshot``; then every tensor is copied now into one host buffer taken
    from ``buffers`` (a fresh one if None; ``Flat.snapshot``, to give back
    once the save is done), so the caller may change its tensors as soon as
    this returns. Device tensors are always copied to the host (one at a time
    unless ``snapshot``).

    Raises TypeError naming the key path for a value ckpt cannot store (an
    object, a lambda, a dict key other than str/int, a sparse tensor) and
    ValueError for out-of-range values; nothing is sent then.
    """
    out = Flat()
    collecting = gc.isenabled()
    gc.disable()  # one Entry per node, no cycles: nothing for the collector
    try:
        _visit(value, None, "", 0, out.entries)
        if snapshot:
            _copy_snapshot(out, buffers)
    finally:
        if collecting:
            gc.enable()
    return out


def _where(path: str) -> str:
    return f"'{path}'" if path else "the root value"


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _visit(v: Any, key: Union[str, int, None], path: str, depth: int, out: List[Entry]) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"{_where(path)} is nested deeper than {MAX_DEPTH} levels")
    t = type(v)
    if t in _PLAIN_TENSORS or isinstance(v, torch.Tensor):
        out.append(_tensor_entry(v, key, path))
    elif v is None:
        out.append(Entry(key, "none"))
    elif t is bool:
        out.append(Entry(key, "bool", v))
    elif t is int or (isinstance(v, int) and not isinstance(v, bool)):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"{_where(path)}: int {v} does not fit in 64 bits")
        out.append(Entry(key, "int", int(v)))
    elif isinstance(v, float):
        out.append(Entry(key, "float", float(v)))
    elif isinstance(v, str):
        if len(v) > MAX_INLINE_STRING // 4 and len(v.encode("utf-8")) > MAX_INLINE_STRING:
            raise ValueError(f"{_where(path)}: strings are limited to 64 KiB; store larger "
                             "text as bytes")
        out.append(Entry(key, "str", str(v)))
    elif isinstance(v, (bytes, bytearray, memoryview)):
        blob = memoryview(bytes(v) if not isinstance(v, bytes) else v).cast("B")
        e = Entry(key, "bytes")
        e.size = len(blob)
        e.data = blob
        out.append(e)
    elif t is dict or t is collections.OrderedDict:
        out.append(Entry(key, "dict", len(v)))
        for k, item in v.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"dict {_where(path)} has a key {k!r} of type "
                                f"{type(k).__name__}; ckpt stores only str and int keys")
            if isinstance(k, int) and not _INT64_MIN <= k <= _INT64_MAX:
                raise ValueError(f"dict {_where(path)}: key {k} does not fit in 64 bits")
            _visit(item, k, join(path, str(k)), depth + 1, out)
    elif t is list or t is tuple or t is torch.Size:
        out.append(Entry(key, "list" if t is list else "tuple", len(v)))
        for i, item in enumerate(v):
            _visit(item, None, join(path, str(i)), depth + 1, out)
    elif isinstance(v, torch.nn.Module):
        raise TypeError(
            f"cannot save {_where(path)}: a {type(v).__qualname__} module object; save its "
            "state_dict() (or a TorchScript archive as bytes: torch.jit.save to io.BytesIO)")
    else:
        raise TypeError(
            f"cannot save {_where(path)}: a value of type {type(v).__module__}."
            f"{type(v).__qualname__}; ckpt stores tensors, dicts (str or int keys), lists, "
            "tuples, int, float, bool, str, bytes and None (no pickled objects)")


def _tensor_entry(t: torch.Tensor, key: Union[str, int, None], path: str) -> Entry:
    if type(t) not in _PLAIN_TENSORS:
        raise TypeError(f"cannot save {_where(path)}: tensor subclass "
                        f"{type(t).__module__}.{type(t).__qualname__} (save a plain tensor, "
                        "e.g. a DTensor through ckpt.dcp)")
    device = t.device
    if t.layout is not torch.strided or device.type == "meta":
        raise TypeError(f"cannot save tensor {_where(path)}: only dense strided tensors with "
                        f"data (layout {t.layout}, device {device})")
    code = TO_PB.get(t.dtype)  # quantized dtypes are not there either
    if code is None:
        raise TypeError(f"cannot save tensor {_where(path)}: dtype {t.dtype} is not supported")
    e = Entry(key, "tensor")
    e.dtype = code
    e.shape = tuple(t.shape)
    e.device = "cpu" if device.type == "cpu" else str(device)
    e.requires_grad = t.requires_grad
    e.size = t.nbytes
    # Made contiguous (and copied to the host) when sent; a snapshot copies
    # it into its buffer once every tensor is visited.
    e.data = t.detach() if e.requires_grad else t
    return e


def data_tensor(e: Entry) -> torch.Tensor:
    """A tensor entry's data as a tensor: itself (on its device), or a view of
    its host snapshot."""
    if isinstance(e.data, torch.Tensor):
        return e.data
    assert isinstance(e.data, memoryview)
    if not e.size:
        return torch.empty(e.shape, dtype=FROM_PB[e.dtype])
    return torch.frombuffer(e.data, dtype=FROM_PB[e.dtype]).view(e.shape)


def holds_its_values(t: torch.Tensor) -> bool:
    """Whether a tensor's memory holds its values in row-major order, as a
    checkpoint stores them: a contiguous CPU tensor without a conj or neg bit
    (its bytes can be read or written at its data_ptr)."""
    return t.is_cpu and t.is_contiguous() and not t.is_conj() and not t.is_neg()


def data_source(data: Data) -> Tuple[Any, Any]:
    """A node's bytes as a chunk source (see _wire.next_frame) and an owner to
    keep alive: a contiguous CPU tensor's (address, length) when the C
    accelerator frames and hashes chunks (no Python object per chunk but
    that tuple), else a memoryview (data_view)."""
    if _wire.ADDRESS_SOURCES and data.__class__ is not memoryview and holds_its_values(data):
        return (data.data_ptr(), data.nbytes), data
    return data_view(data)


def data_view(data: Data) -> Tuple[memoryview, Any]:
    """The bytes of a node as a uint8 memoryview, and an owner to keep alive."""
    if isinstance(data, memoryview):
        return data, None
    assert isinstance(data, torch.Tensor)
    if data.is_cpu:
        # The common case in a few calls (each torch call may hand the GIL
        # over): a contiguous CPU tensor numpy can view. numpy() refuses
        # tensors with the conj/neg bit set: those take the general path.
        if data.dtype in _VIEW_FAST and data.dim() and data.is_contiguous():
            try:
                return memoryview(data.numpy()).cast("B"), data
            except RuntimeError:
                pass
        return tensor_bytes(data)
    return tensor_bytes(data.to("cpu"))


# ---------------------------------------------------------------- loading


def flattened_keys(nodes: Sequence[pb.Node],
                   facts: Optional[Sequence[_wire.Facts]] = None) -> List[str]:
    """Each node's key path ("model_state_dict/fc.weight", list indices as
    numbers), like the server's glob patterns see them. ``facts``: the nodes'
    _wire.node_facts, when the caller has them."""
    if facts is None:
        facts = [_wire.facts_of(n) for n in nodes]
    keys = [""] * len(facts)
    stack: List[List[int]] = []  # [node, remaining, next_index]
    containers = _wire.NODE_CONTAINERS
    for i, (field, key, _, _, _, _, size) in enumerate(facts):
        if stack:
            parent = stack[-1]
            k = key if key.__class__ is str else str(parent[2] if key is None else key)
            keys[i] = join(keys[parent[0]], k)
            parent[2] += 1
            parent[1] -= 1
        if field in containers and size > 0:
            stack.append([i, size, 0])
        else:
            while stack and stack[-1][1] == 0:
                stack.pop()
    return keys


MapLocation = Union[None, str, torch.device, Dict[str, Any], Callable[..., Any]]


def device_available(device: torch.device) -> bool:
    if device.type in ("cpu", "meta"):
        return True
    if device.type == "cuda":
        try:
            return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - any CUDA failure means no device
            return False
    try:
        torch.empty(0, device=device)
        return True
    except Exception:  # noqa: BLE001
        return False


def target_device(map_location: MapLocation, saved: str) -> Optional[torch.device]:
    """Where a tensor saved on ``saved`` goes; None for a callable map_location
    (decided once its bytes are in)."""
    if map_location is None:
        return torch.device(saved)
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict):
        mapped = map_location.get(saved, saved)
        return torch.device(mapped)
    if callable(map_location):
        return None
    raise TypeError(f"map_location must be a str, torch.device, dict or callable, "
                    f"not {type(map_location).__name__}")


def unavailable_message(key: str, saved: str, target: torch.device) -> str:
    return (f"tensor '{key}' was saved on {saved} but {target} is not available here; "
            f"pass map_location (e.g. map_location='cpu' or {{'{saved}': 'cpu'}}), "
            "like torch.load")


def apply_callable(map_location: Callable[..., Any], tensor: torch.Tensor, saved: str,
                   key: str) -> torch.Tensor:
    """torch.load's callable form: ``map_location(storage, location)`` returns a
    storage (its device is where the tensor goes) or None (the saved device)."""
    result = map_location(tensor.untyped_storage(), saved)
    if result is None:
        device = torch.device(saved)
        if not device_available(device):
            raise RuntimeError(unavailable_message(key, saved, device))
        return tensor.to(device)
    if isinstance(result, (str, torch.device)):
        return tensor.to(result)
    if isinstance(result, torch.TypedStorage):
        result = result.untyped_storage()
    if isinstance(result, torch.UntypedStorage):
        out = torch.empty(0, dtype=tensor.dtype, device=result.device)
        out.set_(result, 0, tensor.shape)
        return out
    raise TypeError(f"map_location returned {type(result).__name__}; expected a storage, "
                    "a device or None")


def build(nodes: Sequence[pb.Node], leaves: Sequence[Any], strip_prefix: str = "",
          facts: Optional[Sequence[_wire.Facts]] = None) -> Any:
    """The Python value of a pre-order tree whose data leaves (tensors, bytes)
    are given per node index in ``leaves`` (``facts``: as flattened_keys)."""
    if facts is None:
        facts = [_wire.facts_of(n) for n in nodes]
    pos = [0]

    def one(depth: int) -> Any:
        i = pos[0]
        pos[0] += 1
        field, _, _, _, _, _, size = facts[i]
        if field == 11 or field == 12:  # tensor, bytes
            return leaves[i]
        if field == 6:
            return None
        if field == 7:
            return nodes[i].bool_value
        if field == 8:
            return nodes[i].int_value
        if field == 9:
            return nodes[i].float_value
        if field == 10:
            return nodes[i].string_value
        if field == 4 or field == 5:  # list, tuple
            items = [one(depth + 1) for _ in range(size)]
            return items if field == 4 else tuple(items)
        if field == 3:  # dict
            entries = []
            all_tensor = size > 0
            all_str = True
            for _ in range(size):
                at = pos[0]
                child, key, _, _, _, _, _ = facts[at]
                if key is None:
                    key = 0  # as protobuf reads an unset int_key
                all_str = all_str and key.__class__ is str
                if child == 11:  # the common leaf, without a call
                    pos[0] = at + 1
                    entries.append((key, leaves[at]))
                    continue
                all_tensor = False
                entries.append((key, one(depth + 1)))
            if all_tensor:
                if strip_prefix and all_str and depth <= 1:
                    entries = [(k[len(strip_prefix):] if k.startswith(strip_prefix) else k, t)
                               for k, t in entries]
                return collections.OrderedDict(entries)
            return dict(entries)
        raise ValueError(f"node {i} has no value")

    if not nodes:
        raise ValueError("empty tree")
    return one(0)
