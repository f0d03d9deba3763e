"""What the client's calls return: a version's record, a save's result, listings,
manifests, retention policies, GC results and server statistics (plain frozen
dataclasses made from the ``ckpt.v1`` messages)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Dict, List, Optional, Tuple

import torch

from ckpt.v1 import checkpoint_pb2 as pb


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
    parent: str = ""  # lineage: "NAME@VERSION" it was trained from; "" for none

    @staticmethod
    def from_proto(v: pb.VersionInfo) -> "VersionInfo":
        created = None
        if v.HasField("create_time"):
            created = datetime.datetime.fromtimestamp(
                v.create_time.seconds + v.create_time.nanos / 1e9, tz=datetime.timezone.utc)
        return VersionInfo(v.name, v.version, created, v.step, v.epoch, dict(v.metadata),
                           list(v.tags), v.num_tensors, v.num_nodes, v.data_bytes, v.new_bytes,
                           v.world_size, v.parent)


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
class TensorStats:
    """A tensor's statistics, stored with its version: min, max, mean, std
    (population) and L2 norm over the finite elements; NaN and infinities counted
    apart."""

    count: int
    min: float
    max: float
    mean: float
    std: float
    l2: float
    nan: int
    pos_inf: int
    neg_inf: int

    @property
    def nonfinite(self) -> int:
        return self.nan + self.pos_inf + self.neg_inf

    @staticmethod
    def from_proto(p: Any) -> "TensorStats":
        return TensorStats(p.count, p.min, p.max, p.mean, p.std, p.l2, p.nan, p.pos_inf,
                           p.neg_inf)


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
    stats: Optional[TensorStats] = None  # tensors saved with statistics


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
