"""The ckpt client: ``torch.save`` / ``torch.load`` / ``load_state_dict`` against a
ckpt server, and the listing, tagging, retention and garbage-collection calls.

A pure-Python gRPC client (grpcio): control messages are protobuf, tensor bytes
travel in hand-built frames (see ``_wire``), chunk digests are XXH3-128 computed
by ``xxhash`` on memoryviews of the tensors' own memory. Every byte moves in C
(grpcio, xxhash, memcpy) with the GIL released while it waits for the network and
while it hashes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import gc
import os
import queue
import sys
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
import torch
import xxhash

from ckpt import _tree, _wire
from ckpt.errors import (Error, FailedPrecondition, Internal, InvalidArgument, NotFound,
                         Unavailable, from_rpc_error)
from ckpt.v1 import checkpoint_pb2 as pb
from ckpt.v1 import checkpoint_pb2_grpc as pb_grpc

_SERVICE = "/ckpt.v1.CheckpointService/"
# Response messages are <= 4 MiB by protocol; leave headroom.
_MAX_RECEIVE = (4 << 20) + (256 << 10)
_MAX_BATCH_NODES = 10000
_NODE_BATCH_PROTO = 1 << 20
DEFAULT_SERVER = "localhost:50051"

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """One committed version (``ckpt.v1.VersionInfo``)."""

    name: str
    version: int
    create_time: Optional[datetime.datetime]
    step: int
    epoch: int
    metadata: Dict[str, str]
    tags: List[str]
    num_tensors: int
    num_nodes: int
    data_bytes: int
    new_bytes: int
    world_size: int

    @staticmethod
    def from_proto(v: pb.VersionInfo) -> "VersionInfo":
        created = None
        if v.HasField("create_time"):
            created = datetime.datetime.fromtimestamp(
                v.create_time.seconds + v.create_time.nanos / 1e9, tz=datetime.timezone.utc)
        return VersionInfo(v.name, v.version, created, v.step, v.epoch, dict(v.metadata),
                           list(v.tags), v.num_tensors, v.num_nodes, v.data_bytes, v.new_bytes,
                           v.world_size)


@dataclasses.dataclass(frozen=True)
class SaveResult:
    """What a save did. ``version`` is the new version's number."""

    name: str
    version: int
    #: Chunk bytes this client sent (chunks the server lacked).
    bytes_sent: int
    #: Bytes the version added to the store (chunks no earlier version had).
    new_bytes: int
    #: Tensor and byte-leaf bytes of the version (logical size).
    data_bytes: int
    chunks_total: int
    chunks_sent: int
    #: Versions the name's retention policy deleted after this save, oldest first.
    pruned_versions: List[int]
    info: VersionInfo


@dataclasses.dataclass(frozen=True)
class CheckpointSummary:
    name: str
    latest_version: int
    num_versions: int
    latest_create_time: Optional[datetime.datetime]


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One node of a stored tree: its key path and what it holds."""

    key: str
    kind: str  # dict, list, tuple, none, bool, int, float, str, tensor, bytes
    dtype: Optional[torch.dtype] = None
    shape: Optional[Tuple[int, ...]] = None
    device: Optional[str] = None
    requires_grad: bool = False
    size: int = 0  # data bytes, or number of children for containers
    value: Any = None  # scalars


@dataclasses.dataclass(frozen=True)
class Manifest:
    version: VersionInfo
    entries: List[ManifestEntry]


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """Which versions of a name to keep (see the README's "Retention")."""

    keep_last: int = 0
    keep_every_steps: int = 0
    keep_best: int = 0
    metric: str = ""
    higher_is_better: bool = False


@dataclasses.dataclass(frozen=True)
class GcResult:
    chunks_removed: int
    bytes_removed: int
    orphan_uploads_removed: int


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    server_version: str
    chunk_size: int
    max_message_bytes: int
    checkpoints: int
    versions: int
    chunks: int
    stored_bytes: int
    logical_bytes: int
    dedup_ratio: float
    disk_bytes: int
    active_uploads: int
    #: Bytes gc would reclaim now (0 from servers that do not report it).
    garbage_bytes: int = 0


# ---------------------------------------------------------------- helpers


def escape_glob(text: str) -> str:
    """Escapes glob metacharacters so that ``text`` matches only itself."""
    return "".join("\\" + c if c in "*?[\\" else c for c in text)


def _parse_ref(name: str, version: int, tag: str) -> Tuple[str, int, str]:
    """NAME@VERSION / NAME@TAG (like the CLI) unless version or tag is given."""
    if "@" in name and not version and not tag:
        name, sel = name.split("@", 1)
        if sel.isdigit() and int(sel) > 0:
            return name, int(sel), ""
        return name, 0, sel
    return name, version or 0, tag or ""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _read(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {what} '{path}': {e.strerror}") from None


class _Broken(Exception):
    """The save stream ended while we were writing: the server's status says why."""


class _Requests:
    """The request side of a bidi stream: a bounded queue grpcio drains in its
    own thread as the network accepts messages (bounding client memory)."""

    _END = object()

    def __init__(self, depth: int = 4) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue(depth)
        self.call: Any = None

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._END:
                return
            yield item

    def put(self, item: bytes) -> None:
        while True:
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.call is not None and not self.call.is_active():
                    raise _Broken() from None

    def close(self) -> None:
        while True:
            try:
                self._q.put_nowait(self._END)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass


@dataclasses.dataclass
class _Batch:
    request: bytes
    sources: Dict[bytes, memoryview]
    owners: List[Any]
    data: int
    chunks: int
    next: int


@dataclasses.dataclass
class Part:
    """One rank's part of a multi-part save (``ckpt.v1.PartInfo``): the version
    commits when all ``world_size`` parts with the same ``save_id`` are in."""

    rank: int
    world_size: int
    save_id: str


class _SaveCall:
    """One Save stream: Begin, node batches answered by NeedChunks, the chunks
    asked for, Commit, SaveResult."""

    def __init__(self, client: "Client", name: str, flat: _tree.Flat, step: int, epoch: int,
                 metadata: Optional[Dict[str, str]], tags: Sequence[str], part: Optional[Part],
                 timeout: Optional[float]) -> None:
        self.client = client
        self.name = name
        self.flat = flat
        self.requests = _Requests()
        self.bytes_sent = 0
        self.chunks_total = 0
        self.chunks_sent = 0
        begin = pb.SaveRequest()
        b = begin.begin
        b.name = name
        b.step = int(step)
        b.epoch = int(epoch)
        for k, v in (metadata or {}).items():
            b.metadata[str(k)] = str(v)
        b.tags.extend(tags)
        if part is not None and part.world_size > 1:
            b.part.rank = part.rank
            b.part.world_size = part.world_size
            b.part.save_id = part.save_id
        self._begin = begin.SerializeToString()
        self._timeout = timeout
        self.call = None

    def _next(self, want: str) -> Any:
        try:
            raw = next(self.call)
        except StopIteration:
            raise Internal("save stream ended without a reply") from None
        response = pb.SaveResponse.FromString(raw)
        if response.WhichOneof("msg") != want:
            raise Internal(f"unexpected save response {response.WhichOneof('msg')}")
        return getattr(response, want)

    def _prepare(self, start: int, chunk_size: int, index: int = 2) -> _Batch:
        """Hashes the nodes of the next batch (runs ahead on a worker thread;
        xxhash releases the GIL). The first batches are small (1/16 and 1/4 of
        the limits: ``index`` is the batch's number) so that the server has
        work before the client has gone through thousands of tensors."""
        entries = self.flat.entries
        batch = pb.SaveRequest()
        nodes = batch.nodes.nodes
        add = nodes.add
        sources: Dict[bytes, memoryview] = {}
        owners: List[Any] = []
        data = chunks = proto = count = 0
        i = start
        shrink = 4 ** max(0, 2 - index)
        limit = max(1, self.client._batch_bytes // shrink)
        max_nodes = max(1, _MAX_BATCH_NODES // shrink)
        n = len(entries)
        hasher = xxhash.xxh3_128
        while i < n and count < max_nodes and proto < _NODE_BATCH_PROTO and (
                not count or data < limit):
            e = entries[i]
            ref = e.fill(add())
            count += 1
            i += 1
            if ref is None:
                proto += 32
                continue
            size = e.size
            if not size:
                proto += 64
                continue
            mv, owner = _tree.data_view(e.data)
            owners.append(owner)
            if len(mv) != size:
                raise InvalidArgument(f"node {i - 1}: {len(mv)} bytes given, {size} declared")
            ref.chunk_size = chunk_size
            if size <= chunk_size:
                digest = hasher(mv).digest()
                ref.chunks.append(digest)
                sources[digest] = mv
                chunks += 1
            else:
                digests = []
                for off in range(0, size, chunk_size):
                    piece = mv[off:off + chunk_size]
                    digest = hasher(piece).digest()
                    digests.append(digest)
                    sources[digest] = piece
                ref.chunks.extend(digests)
                chunks += len(digests)
            data += size
            proto += 64 + 18 * ((size + chunk_size - 1) // chunk_size)
        return _Batch(batch.SerializeToString(), sources, owners, data, chunks, i)

    def send(self) -> None:
        """Runs the stream up to and including SaveCommit."""
        client = self.client
        self.call = client._save_method(iter(self.requests), metadata=client._metadata(),
                                        timeout=self._timeout)
        self.requests.call = self.call
        # Tens of thousands of short-lived objects (nodes, frames) and no
        # cycles: the cyclic collector would only rescan them.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.requests.put(self._begin)
            accepted = self._next("accepted")
            chunk_size = accepted.chunk_size
            if client._chunk_size:
                chunk_size = min(client._chunk_size, accepted.max_chunk_bytes)
            if chunk_size <= 0:
                raise Internal("server announced chunk size 0")
            n = len(self.flat.entries)
            if n == 0:
                raise InvalidArgument("nothing to save: empty tree")
            index = 0
            with concurrent.futures.ThreadPoolExecutor(1, "ckpt-hash") as pool:
                ahead = pool.submit(self._prepare, 0, chunk_size, 0)
                while True:
                    batch = ahead.result()
                    more = batch.next < n
                    if more:
                        ahead = pool.submit(self._prepare, batch.next, chunk_size, index + 1)
                    self.requests.put(batch.request)
                    need = self._next("need")
                    if need.batch != index:
                        raise Internal("server answered the wrong node batch")
                    index += 1
                    frames = _wire.ChunkFrames()
                    for digest in need.digests:
                        src = batch.sources.get(digest)
                        if src is None:
                            raise Internal(f"server asked for chunk {digest.hex()} not in this "
                                           "batch")
                        for frame in frames.add_chunk(digest, src):
                            self.requests.put(frame)
                        self.bytes_sent += len(src)
                        self.chunks_sent += 1
                    last = frames.flush()
                    if last:
                        self.requests.put(last)
                    self.chunks_total += batch.chunks
                    del batch
                    if not more:
                        break
            commit = pb.SaveRequest()
            commit.commit.SetInParent()
            self.requests.put(commit.SerializeToString())
        except grpc.RpcError as e:
            self._abort()
            raise from_rpc_error(e, client.target) from None
        except _Broken:
            self._abort()
            raise self._status_error() from None
        except BaseException:
            self._abort(cancel=True)
            raise
        finally:
            if collecting:
                gc.enable()

    def result(self) -> SaveResult:
        """Waits for SaveResult (for a multi-part save: until every part is in)."""
        try:
            result = self._next("result")
            self.requests.close()
            for _ in self.call:  # the server ends the stream: check its status
                pass
        except grpc.RpcError as e:
            self._abort()
            raise from_rpc_error(e, self.client.target) from None
        except BaseException:
            self._abort(cancel=True)
            raise
        info = VersionInfo.from_proto(result.version)
        return SaveResult(info.name, info.version, self.bytes_sent, info.new_bytes,
                          info.data_bytes, self.chunks_total, self.chunks_sent,
                          list(result.pruned_versions), info)

    def cancel(self) -> None:
        self._abort(cancel=True)

    def _abort(self, cancel: bool = False) -> None:
        self.requests.close()
        if cancel and self.call is not None:
            self.call.cancel()

    def _status_error(self) -> Error:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as e:
            return from_rpc_error(e, self.client.target)
        return Unavailable("save stream broken while writing")


# ---------------------------------------------------------------- load sinks

_PREFETCH = os.environ.get("CKPT_LOAD_PREFETCH", "1") != "0"


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

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node]) -> None:
        raise NotImplementedError

    def on_data(self, node: int, offset: int, data: memoryview) -> None:
        raise NotImplementedError

    def scatter_targets(self) -> Optional[Tuple[List[Any], Callable[[int], memoryview],
                                                 Optional[Callable[[int], None]]]]:
        """The fast path (_wire.scatter), asked after on_tree: for each node the
        writable memoryview its data goes into (None: not wanted; anything else:
        replaced by make(node) when its first bytes arrive), make, and a callback
        run when a node's last byte arrived (or None). None: call on_data."""
        return None


def _alloc_host(nbytes: int) -> Tuple[torch.Tensor, memoryview]:
    buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf, (memoryview(buf.numpy()) if nbytes else memoryview(bytearray()))


def _writable_bytes(t: torch.Tensor) -> memoryview:
    """A writable uint8 memoryview of a fresh contiguous CPU tensor's memory."""
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
        self.keys: List[str] = []
        self.tensors: Dict[int, torch.Tensor] = {}
        # Per node: None (no data), a memoryview its bytes go into, or its
        # tensor / True (a byte leaf) until _make makes that view.
        self.targets: List[Any] = []
        self.dtypes: Dict[int, torch.dtype] = {}

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node]) -> None:
        self.version = version
        self.nodes = nodes
        self.keys = _tree.flattened_keys(nodes)
        targets: List[Any] = [None] * len(nodes)
        dtypes = self.dtypes
        tensors = self.tensors
        empty = torch.empty
        from_pb = _tree.FROM_PB
        any_device = self.map_location is None
        for i, node in enumerate(nodes):
            which = node.WhichOneof("value")
            if which == "tensor":
                meta = node.tensor
                dtype = from_pb.get(meta.dtype)
                if dtype is None:
                    raise InvalidArgument(f"tensor '{self.keys[i]}': dtype "
                                          f"{pb.DType.Name(meta.dtype)} is not supported by "
                                          f"torch {torch.__version__}")
                if not any_device or meta.device != "cpu":
                    target = _tree.target_device(self.map_location, meta.device)
                    if target is not None and not _tree.device_available(target):
                        raise FailedPrecondition(
                            _tree.unavailable_message(self.keys[i], meta.device, target))
                dtypes[i] = dtype
                shape = tuple(meta.shape)
                t = empty(shape, dtype=dtype)
                tensors[i] = t
                if meta.data.size:
                    targets[i] = t  # its view is made by _make, as its bytes arrive
            elif which == "bytes":
                targets[i] = True
        self.targets = targets

    def _make(self, i: int) -> memoryview:
        t = self.tensors.get(i)
        if t is None:  # a byte leaf
            return memoryview(bytearray(self.nodes[i].bytes.data.size))
        # A fresh tensor is contiguous: numpy's buffer is its memory.
        if t.dim() and t.dtype in _tree._NUMPY_NATIVE:
            return memoryview(t.numpy()).cast("B")
        return _writable_bytes(t)

    def scatter_targets(self):
        return self.targets, self._make, None

    def on_data(self, node: int, offset: int, data: memoryview) -> None:
        target = self.targets[node]
        if target.__class__ is not memoryview:
            target = self.targets[node] = self._make(node)
        target[offset:offset + len(data)] = data

    def build(self, strip_prefix: str = "") -> Any:
        leaves: Dict[int, Any] = {}
        targets = self.targets
        for i, node in enumerate(self.nodes):
            which = node.WhichOneof("value")
            if which == "tensor":
                leaves[i] = self._tensor(i, node.tensor)
            elif which == "bytes":
                target = targets[i]
                leaves[i] = bytes(target) if target.__class__ is memoryview else b""
        self.targets = []
        self.tensors.clear()
        return _tree.build(self.nodes, leaves, strip_prefix)

    def _tensor(self, i: int, meta: pb.TensorMeta) -> torch.Tensor:
        t = self.tensors[i]
        if callable(self.map_location) and not isinstance(self.map_location, dict):
            t = _tree.apply_callable(self.map_location, t, meta.device, self.keys[i])
        elif meta.device != "cpu" or self.map_location is not None:
            target = _tree.target_device(self.map_location, meta.device)
            if target is not None and target.type != "cpu":
                t = t.to(target)
        if meta.requires_grad and (t.is_floating_point() or t.is_complex()):
            return torch.nn.Parameter(t, requires_grad=True)
        return t


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
        self.views: List[Optional[memoryview]] = []
        self.staged: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # node -> (buf, dst)
        self.sizes: Dict[int, int] = {}

    def _key(self, relative: str) -> str:
        key = relative
        if self.strip_prefix and key.startswith(self.strip_prefix):
            key = key[len(self.strip_prefix):]
        return self.rename.get(key, key)

    def on_tree(self, version: VersionInfo, nodes: List[pb.Node]) -> None:
        keys = _tree.flattened_keys(nodes)
        root = self.root + "/" if self.root else ""
        seen = set()
        errors: List[str] = []
        chosen: Dict[int, torch.Tensor] = {}
        # The loop runs once per stored tensor: lookups hoisted.
        plain_keys = not self.strip_prefix and not self.rename
        cut = len(root)
        get = self.targets.get
        from_pb = _tree.FROM_PB
        for i, node in enumerate(nodes):
            if node.WhichOneof("value") != "tensor":
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
            meta = node.tensor
            if tuple(meta.shape) != dst.shape:
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{_shape_text(meta.shape)} from checkpoint, the shape in current "
                              f"model is {_shape_text(dst.shape)}.")
                continue
            if from_pb.get(meta.dtype) != dst.dtype:
                saved = from_pb.get(meta.dtype, pb.DType.Name(meta.dtype))
                errors.append(f"dtype mismatch for {key}: copying a param with dtype {saved} "
                              f"from checkpoint, the dtype in current model is {dst.dtype}.")
                continue
            chosen[i] = dst
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
        # Destinations are made as the first bytes of each arrive (_make).
        views: List[Any] = [None] * len(nodes)
        for i, dst in chosen.items():
            views[i] = dst
        self.nodes = nodes
        self.views = views

    def _make(self, i: int) -> memoryview:
        dst = self.views[i]
        if dst.device.type == "cpu" and dst.is_contiguous() and not dst.is_conj() and \
                not dst.is_neg():
            if dst.requires_grad:
                dst = dst.detach()
            if dst.dim() and dst.dtype in _tree._NUMPY_NATIVE:
                return memoryview(dst.numpy()).cast("B")
            return _tree.tensor_bytes(dst)[0]
        size = self.nodes[i].tensor.data.size
        buf, view = _alloc_host(size)
        self.staged[i] = (buf, dst)
        self.sizes[i] = size
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

    def on_data(self, node: int, offset: int, data: memoryview) -> None:
        view = self.views[node]
        if view is None:
            return
        if view.__class__ is not memoryview:
            view = self.views[node] = self._make(node)
        view[offset:offset + len(data)] = data
        if offset + len(data) == self.sizes.get(node, -1):
            self._staged_done(node)


# ---------------------------------------------------------------- the client


class Client:
    """A connection to a ckpt server. Thread-safe; picklable (the channel is
    opened on first use, so a pickled client works in another process).

    Arguments left out come from the environment like the ``ckpt`` CLI:
    ``CKPT_SERVER`` (default ``localhost:50051``), ``CKPT_TOKEN``,
    ``CKPT_TOKEN_FILE``, ``CKPT_TLS``, ``CKPT_CA_CERT``, ``CKPT_CERT``,
    ``CKPT_KEY``, ``CKPT_TLS_SERVER_NAME``. Explicit arguments win over the
    environment; a token wins over a token file. ``ca_cert``, ``cert`` and
    ``tls_server_name`` imply ``tls``.

    Args:
        target: ``HOST:PORT`` of the server.
        token: bearer token sent with every call.
        token_file: file holding the token (whitespace stripped).
        tls: connect with TLS (server verified with ``ca_cert`` or the system roots).
        ca_cert: PEM file of the CAs that verify the server.
        cert, key: PEM client certificate and key (servers requiring mTLS).
        tls_server_name: name to verify the server certificate against.
        timeout: seconds for each unary call (saves and loads have none unless given).
        chunk_size: chunk size for saves (0: the server's).
        batch_bytes: data bytes hashed and announced per node batch.
    """

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None,
                 token_file: Optional[PathLike] = None, tls: Optional[bool] = None,
                 ca_cert: Optional[PathLike] = None, cert: Optional[PathLike] = None,
                 key: Optional[PathLike] = None, tls_server_name: Optional[str] = None,
                 timeout: float = 60.0, chunk_size: int = 0,
                 batch_bytes: int = 64 << 20) -> None:
        env = os.environ
        self.target = target or env.get("CKPT_SERVER") or DEFAULT_SERVER
        if token is None and token_file is None:
            token = env.get("CKPT_TOKEN") or None
            if token is None:
                token_file = env.get("CKPT_TOKEN_FILE") or None
        if token is None and token_file is not None:
            token = _read(token_file, "token file").decode("utf-8").strip()
        self._token = token or ""
        self._ca_cert = ca_cert if ca_cert is not None else env.get("CKPT_CA_CERT") or None
        self._cert = cert if cert is not None else env.get("CKPT_CERT") or None
        self._key = key if key is not None else env.get("CKPT_KEY") or None
        self._tls_server_name = (tls_server_name if tls_server_name is not None
                                 else env.get("CKPT_TLS_SERVER_NAME") or None)
        if tls is None:
            tls = _env_flag("CKPT_TLS")
        self._tls = bool(tls or self._ca_cert or self._cert or self._tls_server_name)
        if bool(self._cert) != bool(self._key):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        self._timeout = timeout
        self._chunk_size = chunk_size
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._channel: Optional[grpc.Channel] = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    # -- connection

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_lock", "_channel", "_executor", "_stub", "_save_method", "_load_method"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._channel = None
        self._executor = None

    def __repr__(self) -> str:
        return f"ckpt.Client({self.target!r}{', tls=True' if self._tls else ''})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (waits for pending save_async calls first)."""
        with self._lock:
            executor, self._executor = self._executor, None
            channel, self._channel = self._channel, None
        if executor is not None:
            executor.shutdown(wait=True)
        if channel is not None:
            channel.close()

    def _connect(self) -> None:
        with self._lock:
            if self._channel is not None:
                return
            _tune_malloc()
            options = [("grpc.max_receive_message_length", _MAX_RECEIVE),
                       ("grpc.max_send_message_length", 4 << 20)]
            if self._tls:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(self._ca_cert, "CA certificate")
                    if self._ca_cert else None,
                    private_key=_read(self._key, "client key") if self._key else None,
                    certificate_chain=_read(self._cert, "client certificate")
                    if self._cert else None)
                if self._tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
                channel = grpc.secure_channel(self.target, creds, options=options)
            else:
                channel = grpc.insecure_channel(self.target, options=options)
            self._stub = pb_grpc.CheckpointServiceStub(channel)
            # The data path: requests and responses are raw bytes (see _wire).
            self._save_method = channel.stream_stream(_SERVICE + "Save")
            self._load_method = channel.unary_stream(_SERVICE + "Load")
            self._channel = channel

    @property
    def stub(self) -> pb_grpc.CheckpointServiceStub:
        """The generated gRPC stub on this client's channel (token not added)."""
        self._connect()
        return self._stub

    def _metadata(self) -> List[Tuple[str, str]]:
        return [("authorization", "Bearer " + self._token)] if self._token else []

    def _unary(self, method: str, request: Any) -> Any:
        self._connect()
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata(),
                                               timeout=self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target) from None

    # -- save

    def save(self, obj: Any, name: str, *, tags: Sequence[str] = (), step: int = 0,
             epoch: int = 0, metadata: Optional[Dict[str, Any]] = None,
             timeout: Optional[float] = None, rank: int = 0, world_size: int = 1,
             save_id: str = "") -> SaveResult:
        """``torch.save(obj, ...)`` as the next version of ``name``.

        ``obj`` is anything ``torch.save`` takes in the PyTorch tutorial: tensors of
        every dtype, ``nn.Parameter``, dict/OrderedDict (str or int keys), list,
        tuple, int, float, bool, str, None, bytes, nested freely. Only the chunks
        the server lacks are sent. Returns once the version is durable.

        Raises:
            TypeError: a value ckpt cannot store (an object, a lambda); names its key
                path. Nothing is sent.
            ckpt.Error: the server refused (InvalidArgument for a bad name,
                PermissionDenied, ResourceExhausted for a quota, ...).

        Several ranks can save parts of one version (like the C++ client's
        SaveOptions): each passes its ``rank``, the ``world_size`` and a ``save_id``
        all share, with a dict as ``obj`` (the version is the union of the dicts);
        each call returns once every part is in and the version committed.
        """
        flat = _tree.flatten(obj, snapshot=False)
        part = Part(rank, world_size, save_id) if world_size > 1 else None
        return self._save_flat(name, flat, step=step, epoch=epoch, metadata=metadata,
                               tags=tags, part=part, timeout=timeout)

    def save_async(self, obj: Any, name: str, *, tags: Sequence[str] = (), step: int = 0,
                   epoch: int = 0, metadata: Optional[Dict[str, Any]] = None,
                   timeout: Optional[float] = None
                   ) -> "concurrent.futures.Future[SaveResult]":
        """Like :meth:`save`, but returns once every tensor has been copied to host
        memory (the snapshot): the caller may change its tensors right away. The
        future gives the :class:`SaveResult` (or raises the save's error). Saves of
        one client run in the order they were started."""
        flat = _tree.flatten(obj, snapshot=True)
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, "ckpt-save")
            executor = self._executor
        return executor.submit(self._save_flat, name, flat, step=step, epoch=epoch,
                               metadata=metadata, tags=tags, timeout=timeout)

    def _save_flat(self, name: str, flat: _tree.Flat, *, step: int = 0, epoch: int = 0,
                   metadata: Optional[Dict[str, Any]] = None, tags: Sequence[str] = (),
                   part: Optional[Part] = None, timeout: Optional[float] = None) -> SaveResult:
        call = self._start_save(name, flat, step=step, epoch=epoch, metadata=metadata,
                                tags=tags, part=part, timeout=timeout)
        return call.result()

    def _start_save(self, name: str, flat: _tree.Flat, *, step: int = 0, epoch: int = 0,
                    metadata: Optional[Dict[str, Any]] = None, tags: Sequence[str] = (),
                    part: Optional[Part] = None, timeout: Optional[float] = None) -> _SaveCall:
        """Sends a save up to its commit; ``.result()`` on the returned call waits
        for the version (multi-part saves: for every part)."""
        self._connect()
        call = _SaveCall(self, name, flat, step, epoch, metadata, list(tags), part, timeout)
        call.send()
        return call

    # -- load

    def _load_stream(self, name: str, sink: _Sink, version: int = 0, tag: str = "",
                     patterns: Sequence[str] = (), skip_data: bool = False,
                     timeout: Optional[float] = None,
                     slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:
        self._connect()
        request = pb.LoadRequest(name=name, version=version, tag=tag, patterns=list(patterns),
                                 skip_data=skip_data, slices=list(slices))
        call = self._load_method(request.SerializeToString(), metadata=self._metadata(),
                                 timeout=timeout)
        try:
            return self._run_load(call, sink, slices)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target) from None
        except BaseException:
            call.cancel()  # also ends a prefetching thread's iteration
            raise

    def _run_load(self, call: Any, sink: _Sink,
                  slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:
        stream = _Prefetch(call) if _PREFETCH else iter(call)
        # A load makes tens of thousands of objects (nodes, views, tensors) and
        # no garbage cycles: the cyclic collector would only rescan them
        # (~15 % of a 20,000-tensor load).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._read_load(stream, sink, slices)
        finally:
            if collecting:
                gc.enable()
            if isinstance(stream, _Prefetch):
                stream.close()

    def _read_load(self, stream: Any, sink: _Sink,
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
        while len(nodes) < header.num_nodes:
            field, payload = read("in the tree")
            if field != _wire.LOAD_NODES:
                raise Internal("expected nodes in load stream")
            nodes.extend(pb.NodeBatch.FromString(payload).nodes)
        sizes = [0] * len(nodes)
        for i, n in enumerate(nodes):
            which = n.WhichOneof("value")
            if which == "tensor":
                sizes[i] = n.tensor.data.size
            elif which == "bytes":
                sizes[i] = n.bytes.data.size
        if slices:
            # A sliced tensor's data is its box, packed.
            slice_nodes = list(header.slice_nodes)
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
        sink.data_bytes = header.data_bytes
        sink.on_tree(info, nodes)
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
                    raise Internal(f"malformed load stream: {e}") from None
                received += got
        while received < header.data_bytes:
            field, payload = read("in the data")
            if field != _wire.LOAD_DATA:
                raise Internal("expected data in load stream")
            for index, off, data in _wire.data_pieces(payload):
                if index != node:
                    if index < node or index >= len(nodes) or offset != sizes[node]:
                        raise Internal("load stream pieces out of order")
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

    def load(self, name: str, version: int = 0, tag: str = "", *,
             map_location: _tree.MapLocation = None, keys: Sequence[str] = (),
             strip_prefix: str = "", timeout: Optional[float] = None) -> Any:
        """``torch.load``: the value saved as ``name`` (``version`` or ``tag``, default
        ``latest``; ``"name@3"`` and ``"name@best"`` work too).

        Returns what ``torch.load`` returns for the saved object: dicts (an
        ``OrderedDict`` for a dict of tensors such as a state_dict), lists,
        tuples, scalars, bytes, tensors with their dtypes and shapes, and
        ``nn.Parameter`` for tensors saved with ``requires_grad``. Never runs
        pickle code.

        Args:
            map_location: like torch.load: a device (``"cpu"``, ``torch.device``) for
                every tensor, a dict mapping saved device strings to devices
                (``{"cuda:1": "cuda:0"}``; others stay), or a callable
                ``(storage, location) -> storage or None``. Default: each tensor's
                saved device; if that device is missing here: ckpt.FailedPrecondition
                suggesting map_location.
            keys: glob patterns over flattened keys (``"model_state_dict/*"``,
                ``"*/fc.*"``; keys joined by ``/``, list indices as numbers). Only
                the selected tensors' bytes cross the wire; the result keeps the
                structure above them.
            strip_prefix: removed from the keys of state_dicts (the root dict or a
                dict right under it whose values are all tensors), e.g.
                DataParallel's ``"module."``.
        """
        name, version, tag = _parse_ref(name, version, tag)
        sink = _ValueSink(map_location)
        self._load_stream(name, sink, version, tag, keys, timeout=timeout)
        return sink.build(strip_prefix)

    def load_state_dict(self, module: Union[torch.nn.Module, Dict[str, torch.Tensor]],
                        name: str, version: int = 0,
                        tag: str = "", *, prefix: str = "", strict: bool = True,
                        strip_prefix: str = "", rename: Optional[Dict[str, str]] = None,
                        timeout: Optional[float] = None) -> Any:
        """``module.load_state_dict(torch.load(...), strict)`` without a second copy of
        the model: the stored tensors stream straight into the module's existing
        parameters and buffers. ``module`` may also be a dict of tensors (a
        state_dict), filled in place the same way.

        Args:
            prefix: where the state_dict is in the saved value: ``""`` when the
                version is the state_dict itself, ``"model_state_dict"`` inside the
                tutorial's training checkpoint (nested: ``"models/netA"``). Only
                those tensors' bytes are fetched.
            strict: like PyTorch: missing or unexpected keys raise
                ckpt.FailedPrecondition (a RuntimeError) with PyTorch's message
                ("Error(s) in loading state_dict for Net:\\n\\tMissing key(s) in
                state_dict: ..."), before any byte is copied.
            strip_prefix: removed from stored keys that start with it (DataParallel's
                ``"module."``); then ``rename`` maps whole keys.

        Returns:
            ``_IncompatibleKeys(missing_keys, unexpected_keys)`` like PyTorch.

        Raises:
            ckpt.InvalidArgument: a shape or dtype differs (names the key;
                nothing is copied), even with strict=False.
        """
        name, version, tag = _parse_ref(name, version, tag)
        if isinstance(module, torch.nn.Module):
            targets = module.state_dict(keep_vars=True)
        else:
            targets = module  # a state_dict's tensors, filled in place
        sink = _InPlaceSink(targets, prefix, strip_prefix, rename, strict,
                            module.__class__.__name__)
        patterns = [escape_glob(prefix)] if prefix else []
        with torch.no_grad():
            self._load_stream(name, sink, version, tag, patterns, timeout=timeout)
        from torch.nn.modules.module import _IncompatibleKeys
        return _IncompatibleKeys(sink.missing, sink.unexpected)

    # -- everything else

    def ls(self, prefix: str = "") -> List[CheckpointSummary]:
        """Checkpoint names starting with ``prefix`` (all pages)."""
        out: List[CheckpointSummary] = []
        request = pb.ListCheckpointsRequest(prefix=prefix)
        while True:
            response = self._unary("ListCheckpoints", request)
            for c in response.checkpoints:
                created = None
                if c.HasField("latest_create_time"):
                    created = datetime.datetime.fromtimestamp(
                        c.latest_create_time.seconds + c.latest_create_time.nanos / 1e9,
                        tz=datetime.timezone.utc)
                out.append(CheckpointSummary(c.name, c.latest_version, c.num_versions, created))
            if not response.next_page_token:
                return out
            request.page_token = response.next_page_token

    def versions(self, name: str) -> List[VersionInfo]:
        """Versions of ``name``, oldest first. ckpt.NotFound if none."""
        out: List[VersionInfo] = []
        request = pb.ListVersionsRequest(name=name)
        while True:
            response = self._unary("ListVersions", request)
            out.extend(VersionInfo.from_proto(v) for v in response.versions)
            if not getattr(response, "next_page_token", ""):
                return out
            request.page_token = response.next_page_token

    def show(self, name: str, version: int = 0, tag: str = "") -> Manifest:
        """A version's record and tree (keys, dtypes, shapes, sizes, devices,
        scalars) without its data, like ``ckpt show``."""
        name, version, tag = _parse_ref(name, version, tag)
        request = pb.GetManifestRequest(name=name, version=version, tag=tag)
        nodes: List[pb.Node] = []
        info = None
        while True:
            response = self._unary("GetManifest", request)
            info = VersionInfo.from_proto(response.version)
            nodes.extend(response.nodes)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        keys = _tree.flattened_keys(nodes)
        entries = []
        for key, node in zip(keys, nodes):
            which = node.WhichOneof("value")
            if which == "tensor":
                m = node.tensor
                entries.append(ManifestEntry(key, "tensor", _tree.FROM_PB.get(m.dtype),
                                             tuple(m.shape), m.device, m.requires_grad,
                                             m.data.size))
            elif which == "bytes":
                entries.append(ManifestEntry(key, "bytes", size=node.bytes.data.size))
            elif which in ("dict", "list", "tuple"):
                entries.append(ManifestEntry(key, which, size=getattr(node, which).size))
            elif which == "none":
                entries.append(ManifestEntry(key, "none"))
            else:
                kind = {"bool_value": "bool", "int_value": "int", "float_value": "float",
                        "string_value": "str"}[which]
                entries.append(ManifestEntry(key, kind, value=getattr(node, which)))
        return Manifest(info, entries)

    def tag(self, name: str, tag: str, version: int = 0) -> int:
        """Points ``tag`` at ``version`` (``"name@3"`` works; default latest); returns
        the version tagged."""
        name, version, sel = _parse_ref(name, version, "")
        if not version:
            version = self._resolve(name, sel)
        self._unary("SetTag", pb.SetTagRequest(name=name, tag=tag, version=version))
        return version

    def untag(self, name: str, tag: str) -> None:
        """Removes a user tag."""
        self._unary("DeleteTag", pb.DeleteTagRequest(name=name, tag=tag))

    def delete(self, name: str, version: int = 0, *, force: bool = False) -> int:
        """Deletes one version (``"name@3"`` or ``"name@tag"``); ``force`` also when user
        tags point at it. Returns the chunks released (freed by :meth:`gc`)."""
        name, version, sel = _parse_ref(name, version, "")
        if not version:
            if not sel:
                raise ValueError("delete needs a version: name@VERSION, name@TAG or version=")
            version = self._resolve(name, sel)
        response = self._unary("DeleteVersion",
                               pb.DeleteVersionRequest(name=name, version=version, force=force))
        return response.released_chunks

    def _resolve(self, name: str, tag: str) -> int:
        tag = tag or "latest"
        versions = self.versions(name)
        for v in versions:
            if tag in v.tags:
                return v.version
        if tag == "latest" and versions:
            return versions[-1].version
        raise NotFound(f"checkpoint {name} has no tag '{tag}'")

    def retention(self, name: str, policy: Optional[RetentionPolicy] = None, *,
                  clear: bool = False) -> Union[RetentionPolicy, List[int]]:
        """Without ``policy``: the name's retention policy. With one: sets it and
        returns the versions it would delete now (the next save or :meth:`prune`
        deletes them). ``clear=True`` removes the policy."""
        if policy is None and not clear:
            response = self._unary("GetRetention", pb.GetRetentionRequest(name=name))
            p = response.policy
            return RetentionPolicy(p.keep_last, p.keep_every_steps, p.keep_best, p.metric,
                                   p.higher_is_better)
        p = policy or RetentionPolicy()
        request = pb.SetRetentionRequest(name=name, policy=pb.RetentionPolicy(
            keep_last=p.keep_last, keep_every_steps=p.keep_every_steps, keep_best=p.keep_best,
            metric=p.metric, higher_is_better=p.higher_is_better))
        return list(self._unary("SetRetention", request).would_delete)

    def prune(self, name: str, *, dry_run: bool = False) -> List[int]:
        """Applies the name's retention policy now; the versions deleted."""
        return list(self._unary("Prune", pb.PruneRequest(name=name, dry_run=dry_run)).deleted)

    def gc(self) -> GcResult:
        """Removes chunks no committed version or upload in progress needs."""
        r = self._unary("GarbageCollect", pb.GarbageCollectRequest())
        return GcResult(r.chunks_removed, r.bytes_removed, r.orphan_uploads_removed)

    def stats(self) -> ServerInfo:
        """Server version, chunk size and store totals."""
        r = self._unary("GetServerInfo", pb.GetServerInfoRequest())
        s = r.stats
        return ServerInfo(r.server_version, r.chunk_size, r.max_message_bytes, s.checkpoints,
                          s.versions, s.chunks, s.stored_bytes, s.logical_bytes, s.dedup_ratio,
                          s.disk_bytes, s.active_uploads, getattr(s, "garbage_bytes", 0))


# ---------------------------------------------------------------- default client

_default: Optional[Client] = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client the module-level functions use: ``Client()`` from the
    environment, created on first use (or the one given to set_default_client)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def set_default_client(client: Optional[Client]) -> None:
    """Makes ``client`` the default (None: recreate from the environment)."""
    global _default
    with _default_lock:
        _default = client
