"""The Load stream: reading it (a helper thread a few messages ahead), checking
the header and the tree, and the sinks its data goes into: new tensors for
``load`` (``map_location``) or a module's own tensors for ``load_state_dict``,
scattered in place (``_wire.scatter``)."""

from __future__ import annotations

import collections
import gc
import os
import queue
import sys
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ckpt import _tree, _wire
from ckpt._results import VersionInfo
from ckpt.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable
from ckpt.v1 import checkpoint_pb2 as pb

_PREFETCH = os.environ.get("CKPT_LOAD_PREFETCH", "1") != "0"

# The native path: the C++ client core (python/native/core.cc, built by CMake
# next to this file) reads the Load stream from gRPC's buffers straight into
# the tensors, and sends a single writer's saves of host tensors from their
# memory (Client._native_save). Without it (not built, CKPT_NATIVE=0 or
# CKPT_PURE_PYTHON=1) loads and saves go through grpcio (_run_load, _save).
native: Any = None
if os.environ.get("CKPT_NATIVE", "1") != "0" and os.environ.get("CKPT_PURE_PYTHON") != "1":
    try:
        from ckpt import _core as native  # type: ignore[attr-defined,no-redef]
    except ImportError:
        native = None

# The process whose loads started the native path's gRPC runtime. A process
# forked from it after that shares the runtime's polling state (its epoll
# set) and would steal the parent's network events: it loads through grpcio.
_native_pid = 0


def native_in_this_process() -> Any:
    """The native load path, if this process may use it (see _native_pid)."""
    global _native_pid
    if native is None:
        return None
    if _native_pid == 0:
        _native_pid = os.getpid()
    return native if _native_pid == os.getpid() else None


class _Prefetch:
    """Reads a response stream on a helper thread, a few messages ahead.

    grpcio asks for the next message only when the caller calls next(); reading
    ahead lets the network and the server work while this thread copies the
    previous message's pieces into tensors. At most ``depth`` messages (<= 1 MiB
    each) wait. Errors (grpc.RpcError) surface from next() in order."""

    _END = object()

    def __init__(self, call: Any, depth: int = 4) -> None:
        self._call = call
        self._q: "queue.Queue[Any]" = queue.Queue(depth)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ckpt-load-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._call:
                while True:
                    if self._stop:
                        return
                    try:
                        self._q.put((message, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
            item: Any = (self._END, None)
        except BaseException as e:  # noqa: BLE001 - re-raised by next()
            item = (None, e)
        while not self._stop:
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self) -> "_Prefetch":
        return self

    def __next__(self) -> bytes:
        message, error = self._q.get()
        if error is not None:
            raise error
        if message is self._END:
            self._q.put((self._END, None))
            raise StopIteration
        return message

    def close(self) -> None:
        self._stop = True


class _Sink:
    """Receives a Load stream: the selected tree, then data pieces in order.

    After the load, ``data_bytes`` is what the header announced (the bytes of
    data the server sent)."""

    data_bytes = 0

    def on_slices(self, nodes: List[int]) -> None:
        """For a load with slices, before on_tree: nodes[s] is the index of
        slice s's tensor in the tree (whose data is then the box, packed)."""

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node],
                facts: List[_wire.Facts]) -> None:
        """The selected tree, before its data: its nodes, and what
        _wire.node_facts read of each (cheaper than protobuf's accessors)."""
        raise NotImplementedError

    def on_data(self, node: int, offset: int, data: memoryview) -> None:
        raise NotImplementedError

    def scatter_targets(self) -> Optional[Tuple[List[Any], Callable[[int], memoryview],
                                                 Optional[Callable[[int], None]]]]:
        """The fast path (_wire.scatter), asked after on_tree: for each node
        where its data goes (a writable memoryview, or the address of a CPU
        tensor's memory holding exactly the node's bytes, checked with
        _size_mismatch; None: not wanted; anything else: replaced by make(node) when
        its first bytes arrive), make, and a callback run when a node's last
        byte arrived (or None): for every node whose target is a buffer, given
        or made (the native path runs it for those only, in batches, after
        letting go of the buffer; _wire.scatter for every node it wrote).
        None: call on_data."""
        return None


def _size_mismatch(t: torch.Tensor, nbytes: int, key: Callable[[], str]) -> Internal:
    """The error for a tensor the tree gives ``nbytes`` of data that its shape
    and dtype do not make: a tensor's address goes to _wire.scatter only once
    its nbytes equal what the stream may write there."""
    return Internal(f"tensor '{key()}': the checkpoint holds {nbytes} bytes of data, "
                    f"its shape and dtype make {t.nbytes}")


def _alloc_host(nbytes: int) -> Tuple[torch.Tensor, memoryview]:
    buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf, (memoryview(buf.numpy()) if nbytes else memoryview(bytearray()))


def _writable_bytes(t: torch.Tensor) -> memoryview:
    """A writable uint8 memoryview of a contiguous CPU tensor's memory."""
    if t.numel() == 0:
        return memoryview(bytearray())
    if t.dtype in _tree._NUMPY_NATIVE and t.dim():
        return memoryview(t.numpy()).cast("B")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


_malloc_tuned = False


def _tune_malloc() -> None:
    """Keeps glibc from returning freed message buffers to the kernel between
    messages (each 1 MiB message would otherwise fault fresh pages in: SPEC
    measured loads 1.5-2x slower). Sets M_MMAP_THRESHOLD to 8 MiB and
    M_TRIM_THRESHOLD to 64 MiB once per process; CKPT_MALLOC_TUNING=0 skips it."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if os.environ.get("CKPT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class _ValueSink(_Sink):
    """Builds the value torch.load would return. Tensors are allocated when the
    tree arrives, one after another (allocating each as its bytes arrive,
    between the message buffers, made glibc's malloc 4x slower)."""

    def __init__(self, map_location: _tree.MapLocation) -> None:
        self.map_location = map_location
        self.version: Optional[VersionInfo] = None
        self.nodes: List[pb.Node] = []
        self.facts: List[_wire.Facts] = []
        self._keys: Optional[List[str]] = None
        self.tensors: Dict[int, torch.Tensor] = {}
        # Per node: None (no data), its tensor's address, or True
        # (a byte leaf) until _make makes its buffer.
        self.targets: List[Any] = []
        # Tensors that are not plain CPU tensors as saved (another device,
        # requires_grad): node -> (device, requires_grad).
        self._special: Dict[int, Tuple[str, bool]] = {}

    @property
    def keys(self) -> List[str]:
        """The nodes' key paths, for messages and callables (made when needed:
        a 20,000-tensor load spends ~10 % of its time on them otherwise)."""
        if self._keys is None:
            self._keys = _tree.flattened_keys(self.nodes, self.facts)
        return self._keys

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node],
                facts: List[_wire.Facts]) -> None:
        self.version = version
        self.nodes = nodes
        self.facts = facts
        self._keys = None
        targets: List[Any] = [None] * len(nodes)
        tensors = self.tensors
        special = self._special
        empty = torch.empty
        from_pb = _tree.FROM_PB
        any_device = self.map_location is None
        # Once per tensor (torch.empty with a tuple costs 1 us more than with
        # separate sizes).
        for i, (field, _, code, shape, device, requires_grad, size) in enumerate(facts):
            if field == _wire.NODE_TENSOR:
                dtype = from_pb.get(code)
                if dtype is None:
                    raise InvalidArgument(f"tensor '{self.keys[i]}': dtype "
                                          f"{_dtype_name(code)} is not supported by "
                                          f"torch {torch.__version__}")
                if not any_device or device != "cpu":
                    target = _tree.target_device(self.map_location, device)
                    if target is not None and not _tree.device_available(target):
                        raise FailedPrecondition(
                            _tree.unavailable_message(self.keys[i], device, target))
                t = empty(*shape, dtype=dtype) if shape else empty((), dtype=dtype)
                tensors[i] = t
                if t.nbytes != size:
                    raise _size_mismatch(t, size, lambda: self.keys[i])
                if size:
                    targets[i] = t.data_ptr()
                if device != "cpu" or requires_grad:
                    special[i] = (device, requires_grad)
            elif field == _wire.NODE_BYTES:
                targets[i] = True
        self.targets = targets

    def _make(self, i: int) -> memoryview:
        # Only byte leaves are made: tensors have their address.
        return memoryview(bytearray(self.facts[i][6]))

    def scatter_targets(self):
        return self.targets, self._make, None

    def build(self, strip_prefix: str = "") -> Any:
        # Plain CPU tensors loaded without map_location are their own leaves.
        if self.map_location is None and not self._special:
            leaves: Dict[int, Any] = self.tensors
        else:
            leaves = {i: self._tensor(i, t) for i, t in self.tensors.items()}
        targets = self.targets
        for i, target in enumerate(targets):
            if target is True or target.__class__ is memoryview:  # a byte leaf
                leaves[i] = bytes(target) if target.__class__ is memoryview else b""
        self.targets = []
        self.tensors = {}
        self._special = {}
        return _tree.build(self.nodes, leaves, strip_prefix, self.facts)

    def _tensor(self, i: int, t: torch.Tensor) -> torch.Tensor:
        device, requires_grad = self._special.get(i, ("cpu", False))
        if callable(self.map_location) and not isinstance(self.map_location, dict):
            t = _tree.apply_callable(self.map_location, t, device, self.keys[i])
        elif device != "cpu" or self.map_location is not None:
            target = _tree.target_device(self.map_location, device)
            if target is not None and target.type != "cpu":
                t = t.to(target)
        if requires_grad and (t.is_floating_point() or t.is_complex()):
            return torch.nn.Parameter(t, requires_grad=True)
        return t


def _dtype_name(code: int) -> str:
    try:
        return pb.DType.Name(code)
    except ValueError:
        return str(code)


def _shape_text(shape: Iterable[int]) -> str:
    return f"torch.Size({list(shape)})"


class _InPlaceSink(_Sink):
    """Copies a stored state_dict straight into a module's tensors."""

    def __init__(self, targets: "collections.OrderedDict[str, torch.Tensor]", root: str,
                 strip_prefix: str, rename: Optional[Dict[str, str]], strict: bool,
                 module_name: str) -> None:
        self.targets = targets
        self.root = root
        self.strip_prefix = strip_prefix
        self.rename = rename or {}
        self.strict = strict
        self.module_name = module_name
        self.missing: List[str] = []
        self.unexpected: List[str] = []
        self.views: List[Any] = []  # per node, as ValueSink.targets
        self.staged: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # node -> (buf, dst)

    def _key(self, relative: str) -> str:
        key = relative
        if self.strip_prefix and key.startswith(self.strip_prefix):
            key = key[len(self.strip_prefix):]
        return self.rename.get(key, key)

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node],
                facts: List[_wire.Facts]) -> None:
        keys = _tree.flattened_keys(nodes, facts)
        root = self.root + "/" if self.root else ""
        seen = set()
        errors: List[str] = []
        chosen: Dict[int, Tuple[torch.Tensor, int]] = {}  # node -> (tensor, bytes)
        # The loop runs once per stored tensor: lookups hoisted.
        plain_keys = not self.strip_prefix and not self.rename
        cut = len(root)
        get = self.targets.get
        from_pb = _tree.FROM_PB
        for i, (field, _, code, shape, _, _, size) in enumerate(facts):
            if field != _wire.NODE_TENSOR:
                continue
            relative = keys[i]
            if cut:
                if not relative.startswith(root):
                    continue
                relative = relative[cut:]
            if "/" in relative:
                continue  # nested deeper: not this state_dict's
            key = relative if plain_keys else self._key(relative)
            dst = get(key)
            if dst is None:
                self.unexpected.append(key)
                continue
            seen.add(key)
            if shape != dst.shape:
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{_shape_text(shape)} from checkpoint, the shape in current "
                              f"model is {_shape_text(dst.shape)}.")
                continue
            if from_pb.get(code) != dst.dtype:
                saved = from_pb.get(code, _dtype_name(code))
                errors.append(f"dtype mismatch for {key}: copying a param with dtype {saved} "
                              f"from checkpoint, the dtype in current model is {dst.dtype}.")
                continue
            chosen[i] = (dst, size)
        self.missing = [k for k in self.targets if k not in seen]
        shape_errors = bool(errors)
        if self.strict:
            if self.unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in self.unexpected)))
            if self.missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in self.missing)))
        if errors:
            message = "Error(s) in loading state_dict for {}:\n\t{}".format(
                self.module_name, "\n\t".join(errors))
            raise (InvalidArgument if shape_errors else FailedPrecondition)(message)
        # A contiguous CPU tensor takes its bytes where they are; the others
        # get a buffer as their first bytes arrive (_make), copied in when
        # complete (_staged_done).
        views: List[Any] = [None] * len(nodes)
        for i, (dst, size) in chosen.items():
            if dst.nbytes != size:
                raise _size_mismatch(dst, size, lambda: keys[i])
            if not size:
                continue
            if _tree.holds_its_values(dst):
                views[i] = dst.data_ptr()
            else:
                views[i] = dst
        self.nodes = nodes
        self.facts = facts
        self.views = views

    def _make(self, i: int) -> memoryview:
        dst = self.views[i]
        size = self.facts[i][6]
        buf, view = _alloc_host(size)
        self.staged[i] = (buf, dst)
        return view

    def scatter_targets(self):
        return self.views, self._make, self._staged_done

    def _staged_done(self, node: int) -> None:
        if not self.staged:
            return
        staged = self.staged.pop(node, None)
        if staged is not None:
            buf, dst = staged
            with torch.no_grad():
                dst.copy_(buf.view(dst.dtype).reshape(dst.shape))
            self.views[node] = None


# ---------------------------------------------------------------- reading the stream


def _run_load(call: Any, sink: _Sink,
              slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:
    stream = _Prefetch(call) if _PREFETCH else iter(call)
    # A load makes tens of thousands of objects (nodes, views, tensors) and
    # no garbage cycles: the cyclic collector would only rescan them
    # (~15 % of a 20,000-tensor load).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _read_load(stream, sink, slices)
    finally:
        if collecting:
            gc.enable()
        if isinstance(stream, _Prefetch):
            stream.close()

def _receive_tree(sink: _Sink, info: VersionInfo, nodes: List[pb.Node],
                  facts: List[_wire.Facts], slice_nodes: List[int],
                  slices: Sequence[Any]) -> List[int]:
    """Hands a load's tree to the sink (on_slices, on_tree); returns the bytes
    of data each node gets: its size, or its box's for a sliced tensor."""
    leaves = (_wire.NODE_TENSOR, _wire.NODE_BYTES)
    sizes = [f[6] if f[0] in leaves else 0 for f in facts]
    if slices:
        # A sliced tensor's data is its box, packed.
        if len(slice_nodes) != len(slices):
            raise Internal(f"load header places {len(slice_nodes)} slices, "
                           f"{len(slices)} were asked for")
        for s, i in zip(slices, slice_nodes):
            if i >= len(nodes) or nodes[i].WhichOneof("value") != "tensor":
                raise Internal("load header places a slice on a node that is not a tensor")
            box = _tree.dtype_size(nodes[i].tensor.dtype)
            for n in s.length:
                box *= n
            sizes[i] = box
        sink.on_slices(slice_nodes)
    sink.data_bytes = sum(sizes)
    sink.on_tree(info, nodes, facts)
    return sizes


def _read_load(stream: Any, sink: _Sink,
               slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:

    def read(where: str) -> Tuple[int, memoryview]:
        try:
            return _wire.split_oneof(next(stream))
        except StopIteration:
            raise Unavailable(f"load stream ended {where}") from None

    field, payload = read("before the header")
    if field != _wire.LOAD_HEADER:
        raise Internal("load stream without header")
    header = pb.LoadHeader.FromString(payload)
    info = VersionInfo.from_proto(header.version)
    nodes: List[pb.Node] = []
    facts: List[_wire.Facts] = []
    while len(nodes) < header.num_nodes:
        field, payload = read("in the tree")
        if field != _wire.LOAD_NODES:
            raise Internal("expected nodes in load stream")
        batch = pb.NodeBatch.FromString(payload).nodes
        nodes.extend(batch)
        facts.extend(_wire.node_facts(payload, batch))
    sizes = _receive_tree(sink, info, nodes, facts, list(header.slice_nodes), slices)
    sink.data_bytes = header.data_bytes
    node = 0
    offset = 0
    received = 0
    if header.data_bytes and header.data_bytes != sum(sizes):
        raise Internal(f"load header announces {header.data_bytes} data bytes, the tree "
                       f"holds {sum(sizes)}")
    fast = sink.scatter_targets()
    if fast is not None:
        targets, make, on_complete = fast
        scatter = _wire.scatter
        data_bytes = header.data_bytes
        while received < data_bytes:
            try:
                message = next(stream)
            except StopIteration:
                raise Unavailable("load stream ended in the data") from None
            try:
                node, offset, got = scatter(message, node, offset, sizes, targets, make,
                                            on_complete)
            except (_wire.StreamError, IndexError) as e:
                # (the protocol's own refusals read as the C++ client's)
                text = str(e)
                raise Internal(text if "load stream" in text else
                               f"malformed load stream: {text}") from None
            received += got
    while received < header.data_bytes:
        field, payload = read("in the data")
        if field != _wire.LOAD_DATA:
            raise Internal("expected data in load stream")
        for index, off, data in _wire.data_pieces(payload):
            if index != node:
                if index < node or index >= len(nodes) or offset != sizes[node]:
                    raise Internal("load stream pieces out of order")
                if any(sizes[node + 1:index]):
                    raise Internal("load stream skipped a node's data")
                node = index
                offset = 0
            if off != offset or len(data) > sizes[node] - offset:
                raise Internal("load stream piece out of range")
            sink.on_data(node, off, data)
            offset += len(data)
            received += len(data)
    for _ in stream:  # the server ends the stream: check its status
        pass
    return info


def _run_native_load(core: Any, name: str, sink: _Sink, version: int, tag: str,
                     patterns: Sequence[str], skip_data: bool, timeout: Optional[float],
                     slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:
    """A load through the native path: the C++ core checks the stream as it
    does for the C++ client and asks ``on_tree`` where the data goes; the
    sink decides as for a load read with grpcio. Raises ``native.StatusError``
    for a failed call."""
    received: List[VersionInfo] = []

    def on_tree(version_bytes: bytes, node_bytes: bytes, slice_nodes: Optional[List[int]]) -> Any:
        info = VersionInfo.from_proto(pb.VersionInfo.FromString(version_bytes))
        batch = pb.NodeBatch.FromString(node_bytes).nodes
        nodes = list(batch)
        facts = list(_wire.node_facts(node_bytes, batch))
        _receive_tree(sink, info, nodes, facts, slice_nodes or [], slices)
        received.append(info)
        fast = sink.scatter_targets()
        return sink.on_data if fast is None else fast

    collecting = gc.isenabled()
    gc.disable()  # as in _run_load
    try:
        core.load(name, version, tag, list(patterns), skip_data, timeout,
                  [(s.key, list(s.start), list(s.length)) for s in slices], on_tree)
    finally:
        if collecting:
            gc.enable()
    if not received:
        raise Internal("load ended without its tree")
    return received[0]
