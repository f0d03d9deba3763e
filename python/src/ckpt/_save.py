"""The Save stream: Begin, node batches hashed ahead on a worker thread and
answered by NeedChunks, the chunks the server asked for in hand-built frames
(see ``_wire``), Commit, SaveResult."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import queue
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import grpc

from ckpt import _stats, _tree, _wire
from ckpt._results import SaveResult, VersionInfo
from ckpt.errors import Error, Internal, InvalidArgument, Unavailable, from_rpc_error
from ckpt.v1 import checkpoint_pb2 as pb

if TYPE_CHECKING:
    from ckpt.client import Client

_MAX_BATCH_NODES = 10000
_NODE_BATCH_PROTO = 1 << 20
_SAVE_REQUEST_NODES = b"\x12"  # SaveRequest.nodes = 2 (NodeBatch)
_NODE = b"\x0a"  # NodeBatch.nodes = 1


def _pieces(src: _wire.Source, size: int, chunk_size: int) -> List[_wire.Source]:
    """A node's data source cut into its chunks' sources."""
    if size <= chunk_size:
        return [src]
    if src.__class__ is tuple:
        address = src[0]
        return [(address + off, min(chunk_size, size - off))
                for off in range(0, size, chunk_size)]
    return [src[off:off + chunk_size] for off in range(0, size, chunk_size)]


class _Broken(Exception):
    """The save stream ended while we were writing: the server's status says why."""


class _Requests:
    """The request side of a bidi stream: a bounded queue grpcio drains in its
    own thread as the network accepts messages (bounding client memory)."""

    _END = object()

    def __init__(self, depth: int = 4) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue(depth)
        self.call: Any = None

    def set_depth(self, depth: int) -> None:
        """At most ``depth`` messages wait from now on."""
        with self._q.mutex:
            self._q.maxsize = depth

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
    sources: Dict[bytes, Any]  # digest -> chunk source (_wire.Source)
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
                 timeout: Optional[float], tensor_stats: bool = False,
                 reject_nonfinite: bool = False, parent: str = "") -> None:
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
        b.reject_nonfinite = bool(reject_nonfinite)
        b.parent = parent or ""
        self._stats = bool(tensor_stats or reject_nonfinite)
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
        """Hashes and encodes the nodes of the next batch (runs ahead on a
        worker thread; hashing releases the GIL for large chunks). The first
        batches are small (1/16 and 1/4 of the limits: ``index`` is the
        batch's number) so that the server has work before the client has gone
        through thousands of tensors."""
        entries = self.flat.entries
        framed: List[bytes] = []  # NodeBatch.nodes: tag and length, Node, ...
        sources: Dict[bytes, _wire.Source] = {}
        owners: List[Any] = []
        data = chunks = proto = count = 0
        i = start
        shrink = 4 ** max(0, 2 - index)
        limit = max(1, self.client._batch_bytes // shrink)
        max_nodes = max(1, _MAX_BATCH_NODES // shrink)
        n = len(entries)
        tensor_node = _wire.tensor_node  # None without the C accelerator
        varint = _wire.varint
        while i < n and count < max_nodes and proto < _NODE_BATCH_PROTO and (
                not count or data < limit):
            e = entries[i]
            count += 1
            i += 1
            size = e.size
            src = None
            pieces: List[_wire.Source] = []
            if size:
                src, owner = _tree.data_source(e.data)
                owners.append(owner)
                given = src[1] if src.__class__ is tuple else len(src)
                if given != size:
                    raise InvalidArgument(f"node {i - 1}: {given} bytes given, {size} declared")
                pieces = _pieces(src, size, chunk_size)
            if e.kind == "tensor" and tensor_node is not None:
                stats = None
                if self._stats:
                    message = pb.TensorStats()
                    if _stats.tensor_stats(_tree.data_tensor(e), message):
                        stats = message.SerializeToString()
                encoded, digests = tensor_node(e.key, e.dtype, e.shape, e.device,
                                               e.requires_grad, size, chunk_size, src, stats)
            else:
                node = pb.Node()
                ref = e.fill(node)
                if self._stats and e.kind == "tensor":
                    _stats.tensor_stats(_tree.data_tensor(e), node.tensor.stats)
                digests = []
                if size:
                    ref.chunk_size = chunk_size
                    digests = [_wire.digest(p) for p in pieces]
                    ref.chunks.extend(digests)
                encoded = node.SerializeToString()
            framed.append(_NODE + varint(len(encoded)))
            framed.append(encoded)
            if not size:
                proto += 64 if e.kind in ("tensor", "bytes") else 32
                continue
            for digest, piece in zip(digests, pieces):
                sources[digest] = piece
            chunks += len(digests)
            data += size
            proto += 64 + 18 * len(digests)
        body = sum(map(len, framed))
        request = b"".join([_SAVE_REQUEST_NODES, varint(body), *framed])
        return _Batch(request, sources, owners, data, chunks, i)

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
            whole = _wire.sends_whole_chunks(accepted.max_message_bytes, chunk_size)
            if whole and chunk_size + _wire.PIECE_FRAMING > _wire.PIECE_BYTES:
                # Frames waiting for grpcio: four of 1 MiB, or two whole chunks.
                self.requests.set_depth(2)
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
                    wanted = []
                    for digest in need.digests:
                        src = batch.sources.get(digest)
                        if src is None:
                            raise Internal(f"server asked for chunk {digest.hex()} not in this "
                                           "batch")
                        wanted.append((digest, src))
                        self.bytes_sent += src[1] if src.__class__ is tuple else len(src)
                        self.chunks_sent += 1
                    for frame in _wire.frames(wanted, whole=whole):
                        self.requests.put(frame)
                    self.chunks_total += batch.chunks
                    del batch
                    if not more:
                        break
            commit = pb.SaveRequest()
            commit.commit.SetInParent()
            self.requests.put(commit.SerializeToString())
        except grpc.RpcError as e:
            self._abort()
            raise from_rpc_error(e, client.target, client._tls) from None
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
            raise from_rpc_error(e, self.client.target, self.client._tls) from None
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
            return from_rpc_error(e, self.client.target, self.client._tls)
        return Unavailable("save stream broken while writing")
