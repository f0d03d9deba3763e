"""A torch.distributed.checkpoint (DCP) storage backend on a ckpt server.

    import torch.distributed.checkpoint as dcp
    from ckpt.dcp import CkptStorageWriter, CkptStorageReader

    dcp.save(state_dict, storage_writer=CkptStorageWriter("ckpt://host:50051/team/run/model"))
    dcp.load(state_dict, storage_reader=CkptStorageReader("ckpt://host:50051/team/run/model"))
    # a version or tag: "ckpt://host:50051/team/run/model@3", "...@best"

How a DCP save maps onto ckpt:

- One ``dcp.save`` is one version of NAME, saved as a multi-part save
  (``ckpt.v1.PartInfo``) of world_size + 1 parts: each rank streams its write
  items as part ``rank`` during ``write_data``, and the coordinator adds part
  ``world_size``, DCP's ``Metadata``, in ``finish``. The server commits the
  version atomically when every part is in: a rank (or the coordinator) that
  dies before leaves no version, and its uploaded chunks are reclaimed by ``gc``
  once the server's ``--part-timeout`` expires.
- Tensor shards are stored as row blocks of at most ``block_bytes`` (default
  4 MiB, one chunk): chunks are deduplicated by content, so the unchanged
  shards of the next step are not sent again. A load asks the server for
  exactly the boxes its read plan needs (``LoadRequest.slices``: per block,
  the rows and columns the plan overlaps): only those bytes cross the wire,
  written straight into the target tensors (see ``CkptStorageReader.read_data``).
- The Metadata is stored as a pickle byte leaf (key ``__dcp_metadata__``) and
  read back with a restricted unpickler that only accepts DCP's metadata
  classes, torch.Size and torch dtypes/layouts/memory formats, and Python's
  plain containers: loading never runs arbitrary pickle code. Non-tensor values
  of the state_dict are DCP's own ``torch.save`` byte items, which DCP's planner
  unpickles with ``weights_only=False``; the reader first checks each with
  ``torch.load(weights_only=True)`` and refuses what that refuses (objects of
  your classes) unless ``CkptStorageReader(allow_pickle=True)``.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import threading
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.futures import Future
from torch.distributed.checkpoint import metadata as _md
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner,
                                                  SavePlan, SavePlanner, WriteItemType)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult

from ckpt import _tree
from ckpt._load import _Sink, _alloc_host, _writable_bytes
from ckpt._results import SaveResult
from ckpt._save import Part
from ckpt.client import Client, escape_glob
from ckpt.errors import FailedPrecondition, InvalidArgument
from ckpt.v1 import checkpoint_pb2 as pb

METADATA_KEY = "__dcp_metadata__"
FORMAT_KEY = "__dcp_format__"
FORMAT = "ckpt-dcp-1"
_SCHEME = "ckpt://"
_MAX_PATTERNS = 256  # per Load request (server limit)


def parse_checkpoint_id(checkpoint_id: Any) -> Tuple[str, str, int, str]:
    """``ckpt://HOST:PORT/NAME[@VERSION|@TAG]`` -> (target, name, version, tag)."""
    text = str(checkpoint_id)
    if not text.startswith(_SCHEME):
        raise ValueError(f"not a ckpt checkpoint_id: {text!r} (expected "
                         "ckpt://HOST:PORT/NAME[@VERSION|@TAG])")
    rest = text[len(_SCHEME):]
    target, sep, name = rest.partition("/")
    if not sep or not target or not name:
        raise ValueError(f"checkpoint_id {text!r} needs a host:port and a name: "
                         "ckpt://HOST:PORT/NAME")
    version, tag = 0, ""
    if "@" in name:
        name, sel = name.split("@", 1)
        if sel.isdigit() and int(sel) > 0:
            version = int(sel)
        else:
            tag = sel
    return target, name, version, tag


class _Endpoint:
    """checkpoint_id + client settings; opens its Client lazily (picklable)."""

    def __init__(self, checkpoint_id: Optional[str], client_kwargs: Dict[str, Any]) -> None:
        self.checkpoint_id: Optional[str] = None
        self._client_kwargs = dict(client_kwargs)
        self._client: Optional[Client] = None
        if checkpoint_id is not None:
            self.set(checkpoint_id)

    def set(self, checkpoint_id: Any) -> None:
        self.target, self.name, self.version, self.tag = parse_checkpoint_id(checkpoint_id)
        self.checkpoint_id = str(checkpoint_id)
        self._client = None

    def client(self) -> Client:
        if self.checkpoint_id is None:
            raise ValueError("no checkpoint_id: pass ckpt://HOST:PORT/NAME to the writer/reader "
                             "or as dcp.save/dcp.load's checkpoint_id")
        if self._client is None:
            self._client = Client(self.target, **self._client_kwargs)
        return self._client

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state


# ---------------------------------------------------------------- metadata codec

_METADATA_CLASSES = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                     "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING",
                     "MetadataIndex", "StorageMeta"}
_BUILTINS = {"set", "frozenset", "tuple", "list", "dict", "bytearray", "complex", "slice"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Accepts only DCP's metadata classes, torch.Size, torch dtypes, layouts and
    memory formats, and plain containers: any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" and name in _METADATA_CLASSES:
            return getattr(_md, name)
        if module == "torch":
            if name == "Size":
                return torch.Size
            value = getattr(torch, name, None)
            if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        if module == "torch.serialization" and name == "_get_layout":
            def get_layout(text: str) -> torch.layout:  # "torch.strided"
                value = getattr(torch, str(text).rpartition(".")[2], None)
                if not isinstance(value, torch.layout):
                    raise pickle.UnpicklingError(f"unknown layout {text!r}")
                return value
            return get_layout
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        if module == "builtins" and name in _BUILTINS:
            import builtins
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name} in DCP metadata (ckpt reads only DCP's metadata "
            "classes; a custom planner's planner_data must be made of plain values)")


def encode_metadata(metadata: Metadata) -> bytes:
    blob = pickle.dumps(metadata, protocol=4)
    decode_metadata(blob)  # refuse at save time what the reader would refuse
    return blob


def decode_metadata(blob: bytes) -> Metadata:
    value = _RestrictedUnpickler(io.BytesIO(blob)).load()
    if not isinstance(value, Metadata):
        raise pickle.UnpicklingError(f"DCP metadata is a {type(value).__name__}")
    return value


# ---------------------------------------------------------------- writer


@dataclasses.dataclass(frozen=True)
class _PartPlan:
    """What prepare_global_plan tells each rank (SavePlan.storage_data)."""

    save_id: str
    rank: int
    world_size: int


def _shard_prefix(index: MetadataIndex) -> str:
    offsets = ",".join(str(int(o)) for o in (index.offset or ()))
    return f"{index.fqn}|{offsets}"


class CkptStorageWriter(StorageWriter):
    """DCP ``StorageWriter`` saving into a ckpt server (see the module docstring).

    Args:
        checkpoint_id: ``ckpt://HOST:PORT/NAME``; or give it to ``dcp.save``.
        step, epoch, tags, metadata: recorded on the version, like ``Client.save``.
        block_bytes: largest row block a tensor shard is stored in (default 4 MiB,
            the server's chunk size): the granularity of partial loads.
        **client_kwargs: for :class:`ckpt.Client` (token, token_file, tls, ca_cert,
            ...; defaults from the environment).

    After ``dcp.save`` returns, ``writer.result`` on the coordinator is the
    :class:`ckpt.SaveResult` of the version (``.version``, ``.new_bytes``), and
    ``writer.bytes_sent`` on every rank the chunk bytes that rank sent.
    The writer pickles without its connection, so ``dcp.async_save`` with a
    process executor works.
    """

    def __init__(self, checkpoint_id: Optional[str] = None, *, step: int = 0, epoch: int = 0,
                 tags: Sequence[str] = (), metadata: Optional[Dict[str, Any]] = None,
                 block_bytes: int = 4 << 20, timeout: Optional[float] = None,
                 **client_kwargs: Any) -> None:
        super().__init__()
        self._endpoint = _Endpoint(checkpoint_id, client_kwargs)
        self.step = step
        self.epoch = epoch
        self.tags = list(tags)
        self.metadata = dict(metadata or {})
        self.block_bytes = block_bytes
        self.timeout = timeout
        self.save_id = uuid.uuid4().hex
        self.is_coordinator = False
        self.rank = 0
        self.result: Optional[SaveResult] = None
        self.bytes_sent = 0
        self._part: Optional[_PartPlan] = None
        self._waiter: Optional[threading.Thread] = None
        self._part_error: List[BaseException] = []

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_waiter"] = None
        state["_part_error"] = []
        return state

    @property
    def checkpoint_id(self) -> Optional[str]:
        return self._endpoint.checkpoint_id

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id:
            self._endpoint.set(checkpoint_id)
        self.save_id = uuid.uuid4().hex
        self.result = None
        self.bytes_sent = 0

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        try:
            parse_checkpoint_id(checkpoint_id)
            return True
        except ValueError:
            return False

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        rank = kwargs.get("rank")
        if rank is None:
            import torch.distributed as dist
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = rank
        if not kwargs.get("use_collectives", True):
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                raise NotImplementedError(
                    "CkptStorageWriter needs use_collectives=True: the ranks share one version")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        # A fresh id per save, sent to every rank with its plan (a writer reused
        # without reset() must not reuse the previous save's id).
        self.save_id = uuid.uuid4().hex
        n = len(plans)
        return [dataclasses.replace(p, storage_data=_PartPlan(self.save_id, i, n))
                for i, p in enumerate(plans)]

    def _save(self, flat: _tree.Flat, part: Part):
        return self._endpoint.client()._start_save(
            self._endpoint.name, flat, step=self.step, epoch=self.epoch,
            metadata=self.metadata, tags=self.tags, part=part, timeout=self.timeout)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> "Future[List[WriteResult]]":
        part_plan: _PartPlan = plan.storage_data
        self._part = part_plan
        self.save_id = part_plan.save_id
        self.result = None
        leaves: Dict[str, Any] = {}
        results: List[WriteResult] = []
        for item in plan.items:
            data = planner.resolve_data(item)
            prefix = _shard_prefix(item.index)
            if item.type == WriteItemType.BYTE_IO:
                blob = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
                leaves[prefix + "|b"] = blob
                results.append(WriteResult(item.index, len(blob), (prefix, 0)))
                continue
            t = data.detach()
            rows = t.shape[0] if t.dim() else 1
            nbytes = t.numel() * t.element_size()
            row_bytes = nbytes // rows if rows else 0
            per_block = max(1, self.block_bytes // row_bytes) if row_bytes else max(rows, 1)
            if t.dim() == 0 or rows == 0:
                leaves[f"{prefix}|0"] = t
            else:
                for start in range(0, rows, per_block):
                    leaves[f"{prefix}|{start}"] = t[start:start + per_block]
            results.append(WriteResult(item.index, nbytes, (prefix, per_block)))
        flat = _tree.flatten(leaves)
        call = self._save(flat, Part(part_plan.rank, part_plan.world_size + 1,
                                     part_plan.save_id))
        self.bytes_sent = call.bytes_sent
        errors = self._part_error = []

        # The stream stays open until the version commits (the coordinator's
        # metadata part completes it, in finish, before dcp.save returns on any
        # rank); a thread reads its result. A daemon: if the coordinator never
        # commits, exiting cancels the stream instead of waiting for the
        # server's --part-timeout.
        def wait() -> None:
            try:
                call.result()
            except BaseException as e:  # noqa: BLE001 - reported by finish
                errors.append(e)

        self._waiter = threading.Thread(target=wait, name="ckpt-dcp-part", daemon=True)
        self._waiter.start()
        future: Future = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        blob = encode_metadata(metadata)
        part = self._part
        assert part is not None, "finish before write_data"
        flat = _tree.flatten({METADATA_KEY: blob, FORMAT_KEY: FORMAT})
        call = self._save(flat, Part(part.world_size, part.world_size + 1, part.save_id))
        self.result = call.result()
        if self._waiter is not None:
            self._waiter.join()
        if self._part_error:
            raise self._part_error[0]


# ---------------------------------------------------------------- reader


class _SliceJob:
    """One box of one stored row block, for one read item: where its bytes go."""

    __slots__ = ("entry", "key", "start", "length", "region", "view", "staged", "nbytes",
                 "dtype")

    def __init__(self, entry: List[Any], key: str, start: List[int], length: List[int],
                 region: torch.Tensor) -> None:
        self.entry = entry  # [blocks left, read item, target tensor]
        self.key = key
        self.start = start
        self.length = length
        self.region = region  # the part of the target this box fills
        self.view: Optional[memoryview] = None
        self.staged: Optional[torch.Tensor] = None
        self.nbytes = 0
        self.dtype = region.dtype  # the stored dtype, once the tree says it


# Per Load request: slices (each key once) and their keys' bytes; the request
# stays far below the server's smallest message limit (~1 MiB).
_MAX_SLICES = 20000
_MAX_SLICE_REQUEST_BYTES = 512 << 10


def _slice_groups(jobs: List[_SliceJob]) -> List[List[_SliceJob]]:
    """Splits jobs into Load requests: a key at most once per request (a second
    read item of the same block goes into a later one), bounded in size."""
    rounds: List[List[_SliceJob]] = []
    seen: Dict[str, int] = {}
    for job in jobs:
        r = seen.get(job.key, 0)
        seen[job.key] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(job)
    groups: List[List[_SliceJob]] = []
    for jobs_of_round in rounds:
        group: List[_SliceJob] = []
        size = 0
        for job in jobs_of_round:
            cost = len(job.key) + 24 * (len(job.start) + 1)
            if group and (len(group) >= _MAX_SLICES or size + cost > _MAX_SLICE_REQUEST_BYTES):
                groups.append(group)
                group, size = [], 0
            group.append(job)
            size += cost
        if group:
            groups.append(group)
    return groups


class _PlanSink(_Sink):
    """Receives one Load of a read plan: tensor boxes (slices) go straight into
    their targets' memory (staged when the target is not a contiguous CPU tensor
    of the stored dtype), whole byte leaves go to ``on_bytes(key, value)``."""

    def __init__(self, jobs: List[_SliceJob], on_bytes, on_job) -> None:
        self.jobs = jobs
        self.on_bytes = on_bytes
        self.on_job = on_job
        self.by_node: Dict[int, _SliceJob] = {}
        self.leaves: Dict[int, Tuple[str, memoryview, int]] = {}
        self.num_nodes = 0
        self._targets: List[Any] = []

    def on_slices(self, nodes: List[int]) -> None:
        self.by_node = dict(zip(nodes, self.jobs))

    def on_tree(self, version, nodes: List[pb.Node], facts: List[Any]) -> None:
        if any(n.WhichOneof("value") == "bytes" for n in nodes):
            keys = _tree.flattened_keys(nodes)
            for i, node in enumerate(nodes):
                if node.WhichOneof("value") == "bytes":
                    size = node.bytes.data.size
                    if size == 0:
                        self.on_bytes(keys[i], b"")
                    else:
                        self.leaves[i] = (keys[i], memoryview(bytearray(size)), size)
        for i, job in self.by_node.items():
            meta = nodes[i].tensor
            stored = _tree.FROM_PB.get(meta.dtype)
            if stored is None:
                raise InvalidArgument(f"DCP shard '{job.key}': dtype {pb.DType.Name(meta.dtype)} "
                                      f"is not supported by torch {torch.__version__}")
            job.dtype = stored
            job.nbytes = _tree.dtype_size(meta.dtype)
            for n in job.length:
                job.nbytes *= n
            region = job.region
            if job.nbytes == 0:
                self.on_job(job)
            elif (region.device.type == "cpu" and region.dtype == stored and
                  region.is_contiguous() and not region.is_conj() and not region.is_neg()):
                job.view = _writable_bytes(region)
        self.num_nodes = len(nodes)

    def scatter_targets(self):
        # A box lands in its target's memory, or in a staging buffer made
        # when its first bytes arrive (_make) and copied in when it is
        # complete (_complete); a byte leaf in its buffer.
        targets: List[Any] = [None] * self.num_nodes
        for i, job in self.by_node.items():
            if job.nbytes:
                targets[i] = job.view if job.view is not None else True
        for i, (_, view, _) in self.leaves.items():
            targets[i] = view
        # Kept: a made staging buffer sits in the list until _complete.
        self._targets = targets
        return targets, self._make, self._complete

    def _make(self, node: int) -> memoryview:
        job = self.by_node[node]
        job.staged, job.view = _alloc_host(job.nbytes)
        return job.view

    def _complete(self, node: int) -> None:
        self._targets[node] = None  # the staging buffer goes with the job's
        job = self.by_node.get(node)
        if job is not None:
            if job.staged is not None:
                box = job.staged.view(job.dtype).reshape(tuple(job.length))
                with torch.no_grad():
                    job.region.copy_(box)
                job.staged = None
            job.view = None
            self.on_job(job)
            return
        leaf = self.leaves.pop(node, None)
        if leaf is not None:
            key, view, _ = leaf
            self.on_bytes(key, bytes(view))


class CkptStorageReader(StorageReader):
    """DCP ``StorageReader`` loading a version saved by :class:`CkptStorageWriter`.

    ``checkpoint_id`` is ``ckpt://HOST:PORT/NAME`` (latest), ``.../NAME@3`` or
    ``.../NAME@TAG``. Every rank reads the version the coordinator resolved. Each
    rank fetches only the byte ranges its read plan asks for (boxes of the stored
    shards, cut by the server), so any world size can load what any world size
    saved. After ``dcp.load``, ``reader.bytes_received`` is the data this rank
    received (as the servers' load headers announced it) and
    ``reader.tensor_bytes_received`` the part of it that was tensor boxes: exactly
    the bytes of the read plan's tensor items.
    """

    def __init__(self, checkpoint_id: Optional[str] = None, *,
                 timeout: Optional[float] = None, allow_pickle: bool = False,
                 **client_kwargs: Any) -> None:
        super().__init__()
        self._endpoint = _Endpoint(checkpoint_id, client_kwargs)
        self.timeout = timeout
        self.allow_pickle = allow_pickle
        self.version = 0
        self.bytes_received = 0
        self.tensor_bytes_received = 0
        self.storage_data: Dict[MetadataIndex, Any] = {}
        self._metadata: Optional[Metadata] = None

    @property
    def checkpoint_id(self) -> Optional[str]:
        return self._endpoint.checkpoint_id

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id:
            self._endpoint.set(checkpoint_id)
        self.version = 0
        self.bytes_received = 0
        self.tensor_bytes_received = 0

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return CkptStorageWriter.validate_checkpoint_id(checkpoint_id)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        ep = self._endpoint
        client = ep.client()
        blobs: Dict[str, Any] = {}
        sink = _PlanSink([], blobs.__setitem__, None)
        info = client._load_stream(ep.name, sink, ep.version, ep.tag,
                                   [escape_glob(METADATA_KEY), escape_glob(FORMAT_KEY)],
                                   timeout=self.timeout)
        if METADATA_KEY not in blobs:
            raise FailedPrecondition(f"{ep.name}@{info.version} was not saved by "
                                     "ckpt.dcp.CkptStorageWriter (no DCP metadata)")
        self.version = info.version
        metadata = decode_metadata(blobs[METADATA_KEY])
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = uuid.uuid4().hex
        self._metadata = metadata
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self._metadata = metadata
        self.storage_data = metadata.storage_data
        if self.storage_data is None:
            raise AssertionError("storage_data must not be None in metadata")

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        # Every rank reads the version the coordinator resolved.
        return [dataclasses.replace(p, storage_data=self.version) for p in plans]

    def _shard_sizes(self, index: MetadataIndex) -> Tuple[int, ...]:
        md = self._metadata.state_dict_metadata[index.fqn]
        for chunk in md.chunks:
            if tuple(chunk.offsets) == tuple(index.offset):
                return tuple(chunk.sizes)
        raise InvalidArgument(f"DCP metadata has no shard of {index.fqn} at {index.offset}")

    @staticmethod
    def _check_plain(fqn: str, value: bytes) -> None:
        """DCP's planner unpickles byte items with torch.load(weights_only=False):
        let through only what the weights-only unpickler accepts (tensors,
        containers, numbers, strings), so a stored object cannot run code."""
        try:
            torch.load(io.BytesIO(value), weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal
            raise FailedPrecondition(
                f"DCP value '{fqn}' is not plain data: torch.load(weights_only=True) refused "
                f"it ({str(e).splitlines()[0][:200]}); pass CkptStorageReader(allow_pickle=True) "
                "to trust this checkpoint's pickles") from None

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        ep = self._endpoint
        version = plan.storage_data or self.version
        if self.version and version != self.version:
            raise FailedPrecondition(
                f"this rank read the metadata of {ep.name}@{self.version} but the coordinator "
                f"{ep.name}@{version}; a save landed in between: load an explicit version "
                f"(ckpt://{ep.target}/{ep.name}@{version})")
        # Each read item asks for a box of a stored shard; the shard is stored as
        # row blocks, so each block the box overlaps is fetched as a slice: the
        # server sends exactly the box's bytes, written straight into the target.
        jobs: List[_SliceJob] = []
        byte_reqs: Dict[str, List[Any]] = {}
        for req in plan.items:
            prefix, per_block = self.storage_data[req.storage_index]
            if req.type == LoadItemType.BYTE_IO:
                byte_reqs.setdefault(prefix + "|b", []).append(req)
                continue
            target = planner.resolve_tensor(req).detach()
            shard = self._shard_sizes(req.storage_index)
            entry = [0, req, target]
            first = len(jobs)
            if not shard:  # 0-d
                jobs.append(_SliceJob(entry, f"{prefix}|0", [], [], target))
            else:
                lo = int(req.storage_offsets[0])
                hi = lo + int(req.lengths[0])
                rest_start = [int(o) for o in req.storage_offsets[1:]]
                rest_len = [int(n) for n in req.lengths[1:]]
                for b in range((lo // per_block) * per_block, hi, per_block):
                    a, z = max(lo, b), min(hi, b + per_block, shard[0])
                    if z <= a:
                        continue
                    jobs.append(_SliceJob(entry, f"{prefix}|{b}", [a - b] + rest_start,
                                          [z - a] + rest_len, target[a - lo:z - lo]))
            entry[0] = len(jobs) - first
            if entry[0] == 0 or target.numel() == 0:
                entry[0] = 0
                del jobs[first:]
                planner.commit_tensor(req, target)

        def job_done(job: _SliceJob) -> None:
            job.entry[0] -= 1
            if job.entry[0] == 0:
                planner.commit_tensor(job.entry[1], job.entry[2])

        def bytes_done(key: str, value: bytes) -> None:
            for req in byte_reqs.get(key, ()):
                if not self.allow_pickle:
                    self._check_plain(req.storage_index.fqn, value)
                planner.load_bytes(req, io.BytesIO(value))

        client = ep.client()
        for group in _slice_groups(jobs):
            sink = _PlanSink(group, bytes_done, job_done)
            client._load_stream(ep.name, sink, version, "", timeout=self.timeout,
                                slices=[pb.TensorSlice(key=j.key, start=j.start, length=j.length)
                                        for j in group])
            self.bytes_received += sink.data_bytes
            self.tensor_bytes_received += sink.data_bytes
        keys = sorted(byte_reqs)
        for i in range(0, len(keys), _MAX_PATTERNS):
            sink = _PlanSink([], bytes_done, job_done)
            client._load_stream(ep.name, sink, version, "",
                                [escape_glob(k) for k in keys[i:i + _MAX_PATTERNS]],
                                timeout=self.timeout)
            self.bytes_received += sink.data_bytes
        unfinished = [e[1].storage_index.fqn for e in {id(j.entry): j.entry for j in jobs}.values()
                      if e[0] > 0]
        if unfinished:
            raise FailedPrecondition(f"blocks missing from {ep.name}@{version} for "
                                     f"{unfinished[:5]}")
        future: Future = Future()
        future.set_result(None)
        return future
