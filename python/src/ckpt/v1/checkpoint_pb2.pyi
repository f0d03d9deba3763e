import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
    DTYPE_COMPLEX64: _ClassVar[DType]
    DTYPE_COMPLEX128: _ClassVar[DType]
    DTYPE_UINT16: _ClassVar[DType]
    DTYPE_UINT32: _ClassVar[DType]
    DTYPE_UINT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_INT8: DType
DTYPE_INT16: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_UINT8: DType
DTYPE_BOOL: DType
DTYPE_COMPLEX64: DType
DTYPE_COMPLEX128: DType
DTYPE_UINT16: DType
DTYPE_UINT32: DType
DTYPE_UINT64: DType

class DataRef(_message.Message):
    __slots__ = ("size", "chunk_size", "chunks")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    size: int
    chunk_size: int
    chunks: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunks: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("dtype", "shape", "device", "requires_grad", "data", "stats")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_GRAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    device: str
    requires_grad: bool
    data: DataRef
    stats: TensorStats
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ..., requires_grad: _Optional[bool] = ..., data: _Optional[_Union[DataRef, _Mapping]] = ..., stats: _Optional[_Union[TensorStats, _Mapping]] = ...) -> None: ...

class TensorStats(_message.Message):
    __slots__ = ("count", "min", "max", "mean", "std", "l2", "nan", "pos_inf", "neg_inf")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    NAN_FIELD_NUMBER: _ClassVar[int]
    POS_INF_FIELD_NUMBER: _ClassVar[int]
    NEG_INF_FIELD_NUMBER: _ClassVar[int]
    count: int
    min: float
    max: float
    mean: float
    std: float
    l2: float
    nan: int
    pos_inf: int
    neg_inf: int
    def __init__(self, count: _Optional[int] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ..., std: _Optional[float] = ..., l2: _Optional[float] = ..., nan: _Optional[int] = ..., pos_inf: _Optional[int] = ..., neg_inf: _Optional[int] = ...) -> None: ...

class BytesMeta(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: DataRef
    def __init__(self, data: _Optional[_Union[DataRef, _Mapping]] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class NoneValue(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("str_key", "int_key", "dict", "list", "tuple", "none", "bool_value", "int_value", "float_value", "string_value", "tensor", "bytes")
    STR_KEY_FIELD_NUMBER: _ClassVar[int]
    INT_KEY_FIELD_NUMBER: _ClassVar[int]
    DICT_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    str_key: str
    int_key: int
    dict: Container
    list: Container
    tuple: Container
    none: NoneValue
    bool_value: bool
    int_value: int
    float_value: float
    string_value: str
    tensor: TensorMeta
    bytes: BytesMeta
    def __init__(self, str_key: _Optional[str] = ..., int_key: _Optional[int] = ..., dict: _Optional[_Union[Container, _Mapping]] = ..., list: _Optional[_Union[Container, _Mapping]] = ..., tuple: _Optional[_Union[Container, _Mapping]] = ..., none: _Optional[_Union[NoneValue, _Mapping]] = ..., bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ..., tensor: _Optional[_Union[TensorMeta, _Mapping]] = ..., bytes: _Optional[_Union[BytesMeta, _Mapping]] = ...) -> None: ...

class PartInfo(_message.Message):
    __slots__ = ("rank", "world_size", "save_id")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAVE_ID_FIELD_NUMBER: _ClassVar[int]
    rank: int
    world_size: int
    save_id: str
    def __init__(self, rank: _Optional[int] = ..., world_size: _Optional[int] = ..., save_id: _Optional[str] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("name", "version", "create_time", "step", "epoch", "metadata", "tags", "num_tensors", "num_nodes", "data_bytes", "new_bytes", "world_size", "parent")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NUM_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    create_time: _timestamp_pb2.Timestamp
    step: int
    epoch: int
    metadata: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    num_tensors: int
    num_nodes: int
    data_bytes: int
    new_bytes: int
    world_size: int
    parent: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ..., num_tensors: _Optional[int] = ..., num_nodes: _Optional[int] = ..., data_bytes: _Optional[int] = ..., new_bytes: _Optional[int] = ..., world_size: _Optional[int] = ..., parent: _Optional[str] = ...) -> None: ...

class SaveBegin(_message.Message):
    __slots__ = ("name", "step", "epoch", "metadata", "tags", "part", "reject_nonfinite", "parent")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    REJECT_NONFINITE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    step: int
    epoch: int
    metadata: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    part: PartInfo
    reject_nonfinite: bool
    parent: str
    def __init__(self, name: _Optional[str] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ..., part: _Optional[_Union[PartInfo, _Mapping]] = ..., reject_nonfinite: _Optional[bool] = ..., parent: _Optional[str] = ...) -> None: ...

class NodeBatch(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class ChunkPiece(_message.Message):
    __slots__ = ("digest", "offset", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    offset: int
    data: bytes
    def __init__(self, digest: _Optional[bytes] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChunkBatch(_message.Message):
    __slots__ = ("pieces",)
    PIECES_FIELD_NUMBER: _ClassVar[int]
    pieces: _containers.RepeatedCompositeFieldContainer[ChunkPiece]
    def __init__(self, pieces: _Optional[_Iterable[_Union[ChunkPiece, _Mapping]]] = ...) -> None: ...

class SaveCommit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("begin", "nodes", "chunks", "commit")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    begin: SaveBegin
    nodes: NodeBatch
    chunks: ChunkBatch
    commit: SaveCommit
    def __init__(self, begin: _Optional[_Union[SaveBegin, _Mapping]] = ..., nodes: _Optional[_Union[NodeBatch, _Mapping]] = ..., chunks: _Optional[_Union[ChunkBatch, _Mapping]] = ..., commit: _Optional[_Union[SaveCommit, _Mapping]] = ...) -> None: ...

class SaveAccepted(_message.Message):
    __slots__ = ("chunk_size", "max_chunk_bytes", "max_message_bytes")
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk_size: int
    max_chunk_bytes: int
    max_message_bytes: int
    def __init__(self, chunk_size: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class NeedChunks(_message.Message):
    __slots__ = ("batch", "digests")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    batch: int
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, batch: _Optional[int] = ..., digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SaveResult(_message.Message):
    __slots__ = ("version", "bytes_received", "pruned_versions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    bytes_received: int
    pruned_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., bytes_received: _Optional[int] = ..., pruned_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class SaveResponse(_message.Message):
    __slots__ = ("accepted", "need", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: SaveAccepted
    need: NeedChunks
    result: SaveResult
    def __init__(self, accepted: _Optional[_Union[SaveAccepted, _Mapping]] = ..., need: _Optional[_Union[NeedChunks, _Mapping]] = ..., result: _Optional[_Union[SaveResult, _Mapping]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("name", "version", "tag", "patterns", "skip_data", "slices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    SKIP_DATA_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    tag: str
    patterns: _containers.RepeatedScalarFieldContainer[str]
    skip_data: bool
    slices: _containers.RepeatedCompositeFieldContainer[TensorSlice]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., tag: _Optional[str] = ..., patterns: _Optional[_Iterable[str]] = ..., skip_data: _Optional[bool] = ..., slices: _Optional[_Iterable[_Union[TensorSlice, _Mapping]]] = ...) -> None: ...

class TensorSlice(_message.Message):
    __slots__ = ("key", "start", "length")
    KEY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    key: str
    start: _containers.RepeatedScalarFieldContainer[int]
    length: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., start: _Optional[_Iterable[int]] = ..., length: _Optional[_Iterable[int]] = ...) -> None: ...

class DataPiece(_message.Message):
    __slots__ = ("node", "offset", "data")
    NODE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    node: int
    offset: int
    data: bytes
    def __init__(self, node: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DataBatch(_message.Message):
    __slots__ = ("pieces",)
    PIECES_FIELD_NUMBER: _ClassVar[int]
    pieces: _containers.RepeatedCompositeFieldContainer[DataPiece]
    def __init__(self, pieces: _Optional[_Iterable[_Union[DataPiece, _Mapping]]] = ...) -> None: ...

class LoadHeader(_message.Message):
    __slots__ = ("version", "num_nodes", "data_bytes", "slice_nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    DATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    SLICE_NODES_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    num_nodes: int
    data_bytes: int
    slice_nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., num_nodes: _Optional[int] = ..., data_bytes: _Optional[int] = ..., slice_nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("header", "nodes", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: LoadHeader
    nodes: NodeBatch
    data: DataBatch
    def __init__(self, header: _Optional[_Union[LoadHeader, _Mapping]] = ..., nodes: _Optional[_Union[NodeBatch, _Mapping]] = ..., data: _Optional[_Union[DataBatch, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class CheckpointSummary(_message.Message):
    __slots__ = ("name", "latest_version", "num_versions", "latest_create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    latest_version: int
    num_versions: int
    latest_create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., latest_version: _Optional[int] = ..., num_versions: _Optional[int] = ..., latest_create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointSummary]
    next_page_token: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("name", "version", "tag", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    tag: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., tag: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("version", "first_node", "nodes", "next_page_token")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRST_NODE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    first_node: int
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    next_page_token: str
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., first_node: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteVersionRequest(_message.Message):
    __slots__ = ("name", "version", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteVersionResponse(_message.Message):
    __slots__ = ("released_chunks",)
    RELEASED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    released_chunks: int
    def __init__(self, released_chunks: _Optional[int] = ...) -> None: ...

class SetTagRequest(_message.Message):
    __slots__ = ("name", "tag", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    version: int
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetTagResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTagRequest(_message.Message):
    __slots__ = ("name", "tag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class DeleteTagResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageStats(_message.Message):
    __slots__ = ("checkpoints", "versions", "chunks", "stored_bytes", "logical_bytes", "dedup_ratio", "disk_bytes", "active_uploads", "garbage_bytes")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    GARBAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    checkpoints: int
    versions: int
    chunks: int
    stored_bytes: int
    logical_bytes: int
    dedup_ratio: float
    disk_bytes: int
    active_uploads: int
    garbage_bytes: int
    def __init__(self, checkpoints: _Optional[int] = ..., versions: _Optional[int] = ..., chunks: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., logical_bytes: _Optional[int] = ..., dedup_ratio: _Optional[float] = ..., disk_bytes: _Optional[int] = ..., active_uploads: _Optional[int] = ..., garbage_bytes: _Optional[int] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "chunk_size", "max_message_bytes", "stats")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    chunk_size: int
    max_message_bytes: int
    stats: StorageStats
    def __init__(self, server_version: _Optional[str] = ..., chunk_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., stats: _Optional[_Union[StorageStats, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("namespace", "used_bytes", "quota_bytes")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    used_bytes: int
    quota_bytes: int
    def __init__(self, namespace: _Optional[str] = ..., used_bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("keep_last", "keep_every_steps", "keep_best", "metric", "higher_is_better")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    KEEP_BEST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    keep_every_steps: int
    keep_best: int
    metric: str
    higher_is_better: bool
    def __init__(self, keep_last: _Optional[int] = ..., keep_every_steps: _Optional[int] = ..., keep_best: _Optional[int] = ..., metric: _Optional[str] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class SetRetentionRequest(_message.Message):
    __slots__ = ("name", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: RetentionPolicy
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class SetRetentionResponse(_message.Message):
    __slots__ = ("would_delete",)
    WOULD_DELETE_FIELD_NUMBER: _ClassVar[int]
    would_delete: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, would_delete: _Optional[_Iterable[int]] = ...) -> None: ...

class GetRetentionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRetentionResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: RetentionPolicy
    def __init__(self, policy: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class PruneRequest(_message.Message):
    __slots__ = ("name", "dry_run")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    dry_run: bool
    def __init__(self, name: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PruneResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deleted: _Optional[_Iterable[int]] = ...) -> None: ...

class GarbageCollectRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GarbageCollectResponse(_message.Message):
    __slots__ = ("chunks_removed", "bytes_removed", "orphan_uploads_removed")
    CHUNKS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_UPLOADS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    chunks_removed: int
    bytes_removed: int
    orphan_uploads_removed: int
    def __init__(self, chunks_removed: _Optional[int] = ..., bytes_removed: _Optional[int] = ..., orphan_uploads_removed: _Optional[int] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("name", "path", "files", "bytes", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    files: int
    bytes: int
    versions: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ..., versions: _Optional[int] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("name", "version", "tag", "other_name", "other_version", "other_tag", "max_entries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    OTHER_NAME_FIELD_NUMBER: _ClassVar[int]
    OTHER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OTHER_TAG_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    tag: str
    other_name: str
    other_version: int
    other_tag: str
    max_entries: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., tag: _Optional[str] = ..., other_name: _Optional[str] = ..., other_version: _Optional[int] = ..., other_tag: _Optional[str] = ..., max_entries: _Optional[int] = ...) -> None: ...

class TensorDiff(_message.Message):
    __slots__ = ("key", "change", "dtype_a", "dtype_b", "shape_a", "shape_b", "rel_l2", "max_abs_diff", "nonfinite_pairs")
    class Change(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CHANGE_UNSPECIFIED: _ClassVar[TensorDiff.Change]
        CHANGED: _ClassVar[TensorDiff.Change]
        ONLY_IN_A: _ClassVar[TensorDiff.Change]
        ONLY_IN_B: _ClassVar[TensorDiff.Change]
        META_CHANGED: _ClassVar[TensorDiff.Change]
    CHANGE_UNSPECIFIED: TensorDiff.Change
    CHANGED: TensorDiff.Change
    ONLY_IN_A: TensorDiff.Change
    ONLY_IN_B: TensorDiff.Change
    META_CHANGED: TensorDiff.Change
    KEY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_A_FIELD_NUMBER: _ClassVar[int]
    DTYPE_B_FIELD_NUMBER: _ClassVar[int]
    SHAPE_A_FIELD_NUMBER: _ClassVar[int]
    SHAPE_B_FIELD_NUMBER: _ClassVar[int]
    REL_L2_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_PAIRS_FIELD_NUMBER: _ClassVar[int]
    key: str
    change: TensorDiff.Change
    dtype_a: DType
    dtype_b: DType
    shape_a: _containers.RepeatedScalarFieldContainer[int]
    shape_b: _containers.RepeatedScalarFieldContainer[int]
    rel_l2: float
    max_abs_diff: float
    nonfinite_pairs: int
    def __init__(self, key: _Optional[str] = ..., change: _Optional[_Union[TensorDiff.Change, str]] = ..., dtype_a: _Optional[_Union[DType, str]] = ..., dtype_b: _Optional[_Union[DType, str]] = ..., shape_a: _Optional[_Iterable[int]] = ..., shape_b: _Optional[_Iterable[int]] = ..., rel_l2: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., nonfinite_pairs: _Optional[int] = ...) -> None: ...

class DiffResponse(_message.Message):
    __slots__ = ("a", "b", "tensors", "identical", "changed", "meta_changed", "only_in_a", "only_in_b", "truncated", "bytes_compared")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    META_CHANGED_FIELD_NUMBER: _ClassVar[int]
    ONLY_IN_A_FIELD_NUMBER: _ClassVar[int]
    ONLY_IN_B_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COMPARED_FIELD_NUMBER: _ClassVar[int]
    a: VersionInfo
    b: VersionInfo
    tensors: _containers.RepeatedCompositeFieldContainer[TensorDiff]
    identical: int
    changed: int
    meta_changed: int
    only_in_a: int
    only_in_b: int
    truncated: int
    bytes_compared: int
    def __init__(self, a: _Optional[_Union[VersionInfo, _Mapping]] = ..., b: _Optional[_Union[VersionInfo, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[TensorDiff, _Mapping]]] = ..., identical: _Optional[int] = ..., changed: _Optional[int] = ..., meta_changed: _Optional[int] = ..., only_in_a: _Optional[int] = ..., only_in_b: _Optional[int] = ..., truncated: _Optional[int] = ..., bytes_compared: _Optional[int] = ...) -> None: ...
