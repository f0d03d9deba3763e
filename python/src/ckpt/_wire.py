"""Hand-built protobuf frames for the data path (internal).

Chunk data goes up in frames of at most 1 MiB or of one whole chunk, tensor
data comes down in ``bytes`` fields of at most 1 MiB. Building those messages
with the protobuf runtime would copy every byte into a Python ``bytes`` and
then again into the serialized message; here a ChunkBatch frame is assembled
from small headers and the tensors' memory (one copy, next_frame), and a
DataBatch is parsed in place (its pieces are memoryview slices of the
received message, copied once into the tensors).

Wire format (proto3): a field is ``varint(number << 3 | wire_type)`` followed
by a varint (wire type 0) or ``varint(length)`` and the bytes (wire type 2).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import xxhash

# Field tags used below.
_SAVE_REQUEST_CHUNKS = b"\x1a"  # SaveRequest.chunks = 3 (ChunkBatch)
_CHUNK_BATCH_PIECES = b"\x0a"  # ChunkBatch.pieces = 1 (ChunkPiece)
_PIECE_DIGEST = b"\x0a\x10"  # ChunkPiece.digest = 1, always 16 bytes
_PIECE_OFFSET = b"\x10"  # ChunkPiece.offset = 2 (varint)
_PIECE_DATA = b"\x1a"  # ChunkPiece.data = 3

class StreamError(ValueError):
    """A Load stream that breaks the protocol (pieces out of order or range)."""


# LoadResponse oneof fields.
LOAD_HEADER = 1
LOAD_NODES = 2
LOAD_DATA = 3


_VARINTS: Dict[int, bytes] = {}


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (the lengths of a save's
    pieces repeat: the encodings of up to 64k values are kept)."""
    cached = _VARINTS.get(value)
    if cached is not None:
        return cached
    if value < 0x80:
        out = bytes((value,))
        if len(_VARINTS) < 65536:
            _VARINTS[value] = out
        return out
    key = value
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    encoded = bytes(out)
    if len(_VARINTS) < 65536:
        _VARINTS[key] = encoded
    return encoded


def read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    """Decodes a varint at ``pos``; returns (value, next position)."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise StreamError("malformed varint")


PIECE_BYTES = 1 << 20  # rpc::kPieceBytes
PIECE_FRAMING = 40  # rpc::kPieceFramingBytes
MESSAGE_HEADROOM = 64 << 10  # rpc::kMessageHeadroom
MAX_REQUEST_BYTES = (4 << 20) + MESSAGE_HEADROOM  # rpc::kMaxRequestBytes


def sends_whole_chunks(max_message_bytes: int, chunk_size: int) -> bool:
    """rpc::SendsWholeChunks: whether each chunk too large for a 1 MiB frame
    goes whole, alone in its frame, to a server that accepts messages of up to
    ``max_message_bytes`` (the server then stores it as received, without
    assembling pieces)."""
    return (chunk_size + MESSAGE_HEADROOM <= MAX_REQUEST_BYTES
            and chunk_size + MESSAGE_HEADROOM <= max_message_bytes)


Source = Any  # a chunk's bytes: a buffer, or (address, length) (C accelerator only)


def source_bytes(src: Source) -> memoryview:
    """A chunk source's bytes as a memoryview (an (address, length) source,
    which only the C accelerator's callers make, is copied)."""
    if src.__class__ is tuple:
        address, length = src
        return memoryview(ctypes.string_at(address, length) if length else b"")
    return src


def python_next_frame(chunks: List[Tuple[bytes, Source]], index: int, offset: int, limit: int,
                      whole: bool) -> Tuple[Optional[bytes], int, int]:
    """The next SaveRequest{chunks: ChunkBatch} frame of ``chunks`` [(16-byte
    digest, source)] from chunk ``index`` byte ``offset`` on, as the C++
    client frames them (SendChunks): a chunk too large for a frame goes alone
    and whole when ``whole``; otherwise frames hold at most ``limit`` bytes,
    each piece counting its data and PIECE_FRAMING, and a chunk that fits in
    a frame is never split (it starts the next frame if it does not fit in
    this one). Returns (frame, index, offset) for the next call, or (None,
    index, offset) when no piece is left."""
    if limit <= PIECE_FRAMING:
        raise ValueError("next_frame: bad position or limit")
    parts: List[Any] = []
    body = used = 0

    def piece(digest: bytes, off: int, data: memoryview) -> None:
        nonlocal body, used
        head = _PIECE_DIGEST + digest
        if off:
            head += _PIECE_OFFSET + varint(off)
        head += _PIECE_DATA + varint(len(data))
        lead = _CHUNK_BATCH_PIECES + varint(len(head) + len(data)) + head
        parts.append(lead)
        parts.append(data)
        body += len(lead) + len(data)
        used += len(data) + PIECE_FRAMING

    full = False
    while not full and index < len(chunks):
        digest, src = chunks[index]
        data = source_bytes(src)
        n = len(data)
        if offset == 0:
            if whole and n + PIECE_FRAMING > limit:
                if parts:
                    break  # this frame ends; the chunk goes alone in the next
                piece(digest, 0, data)
                index += 1
                break
            if parts and n + PIECE_FRAMING <= limit < used + n + PIECE_FRAMING:
                break
        while offset < n:
            if used + PIECE_FRAMING >= limit:
                full = True
                break
            take = min(n - offset, limit - used - PIECE_FRAMING)
            piece(digest, offset, data[offset:offset + take])
            offset += take
        if not full:
            index += 1
            offset = 0
    if not parts:
        return None, index, offset
    return b"".join([_SAVE_REQUEST_CHUNKS, varint(body), *parts]), index, offset


def frames(chunks: List[Tuple[bytes, Source]], limit: int = PIECE_BYTES,
           whole: bool = False) -> Iterator[bytes]:
    """Every frame of ``chunks`` (see next_frame), one at a time."""
    index = offset = 0
    while True:
        frame, index, offset = next_frame(chunks, index, offset, limit, whole)
        if frame is None:
            return
        yield frame


def python_copy_into(buffer: Any, copies: List[Tuple[int, int, int]]) -> None:
    """Copies ``length`` bytes from each ``address`` (memory the caller holds)
    into the writable ``buffer`` at ``offset``: copies = [(address, offset,
    length)], each range checked against the buffer."""
    view = memoryview(buffer).cast("B")
    for address, offset, length in copies:
        if offset < 0 or length < 0 or offset + length > len(view) or (not address and length):
            raise ValueError("copy_into: a copy outside the buffer")
        if length:
            view[offset:offset + length] = ctypes.string_at(address, length)


def python_digest(src: Source) -> bytes:
    """A chunk's 16-byte XXH3-128 digest (big-endian high then low 64 bits)."""
    return xxhash.xxh3_128(source_bytes(src)).digest()


def split_oneof(message: bytes) -> Tuple[int, memoryview]:
    """(field number, payload) of a message holding one length-delimited field
    (LoadResponse, SaveResponse)."""
    buf = memoryview(message)
    if not buf:
        return 0, buf
    tag, pos = read_varint(buf, 0)
    if tag & 7 != 2:
        raise ValueError(f"unexpected wire type in field {tag >> 3}")
    length, pos = read_varint(buf, pos)
    return tag >> 3, buf[pos:pos + length]


def data_pieces(batch: memoryview) -> Iterator[Tuple[int, int, memoryview]]:
    """(node, offset, data) of each DataPiece of a DataBatch, data as a slice."""
    pos = 0
    end = len(batch)
    while pos < end:
        tag, pos = read_varint(batch, pos)
        if tag != 0x0A:  # DataBatch.pieces = 1; nothing else is defined
            raise ValueError(f"unexpected field {tag >> 3} in DataBatch")
        length, pos = read_varint(batch, pos)
        stop = pos + length
        node = 0
        offset = 0
        data = batch[0:0]
        while pos < stop:
            tag, pos = read_varint(batch, pos)
            if tag == 0x08:
                node, pos = read_varint(batch, pos)
            elif tag == 0x10:
                offset, pos = read_varint(batch, pos)
            elif tag == 0x1A:
                n, pos = read_varint(batch, pos)
                data = batch[pos:pos + n]
                pos += n
            elif tag & 7 == 0:
                _, pos = read_varint(batch, pos)
            elif tag & 7 == 2:
                n, pos = read_varint(batch, pos)
                pos += n
            else:
                raise ValueError(f"unexpected wire type in DataPiece field {tag >> 3}")
        yield node, offset, data


def scatter(message: bytes, node: int, offset: int, sizes: List[int], targets: List[Any],
            make: Callable[[int], memoryview],
            on_complete: Optional[Callable[[int], None]]) -> Tuple[int, int, int]:
    """Copies the pieces of one LoadResponse{data: DataBatch} message into place.

    The hot loop of loads: pieces are parsed in place (single-byte varints
    inline) and each is copied straight into ``targets[node]`` at its offset:
    a writable memoryview, or an int, the address of memory the caller keeps
    alive that holds the node's ``sizes[node]`` bytes (a tensor's data_ptr).
    Nodes whose target is None are skipped; any other target is replaced by
    ``make(node)`` when its first piece arrives, so that destinations are made
    while the stream flows rather than before it starts. ``on_complete(node)``
    runs when a node's last byte arrived (the C version runs it once the
    message's bytes are in place: it copies them all after checking every
    piece, without the GIL when they are many).
    ``node``/``offset`` is where the stream stands (pieces must continue it:
    node by node, offsets contiguous, within ``sizes``); returns the new
    position and the data bytes of the message."""
    mv = memoryview(message)
    if not message or message[0] != 0x1A:  # LoadResponse.data = 3, length-delimited
        raise StreamError("expected data in load stream")
    b = message[1]
    if b < 0x80:
        length, pos = b, 2
    else:
        length, pos = read_varint(mv, 1)
    end = pos + length
    if end != len(message):
        raise StreamError("malformed data message")
    received = 0
    while pos < end:
        if message[pos] != 0x0A:  # DataBatch.pieces = 1; nothing else is defined
            raise StreamError(f"unexpected field {message[pos] >> 3} in DataBatch")
        b = message[pos + 1]
        if b < 0x80:
            stop = pos + 2 + b
            pos += 2
        else:
            plen, pos = read_varint(mv, pos + 1)
            stop = pos + plen
        index = 0
        off = 0
        start = pos
        n = 0
        while pos < stop:
            tag = message[pos]
            pos += 1
            if tag == 0x1A or tag == 0x08 or tag == 0x10:
                b = message[pos]
                if b < 0x80:
                    value = b
                    pos += 1
                else:
                    value, pos = read_varint(mv, pos)
                if tag == 0x1A:
                    start = pos
                    n = value
                    pos += value
                elif tag == 0x08:
                    index = value
                else:
                    off = value
            else:  # a field this client does not know: skip it
                tag, pos = read_varint(mv, pos - 1)
                if tag & 7 == 0:
                    _, pos = read_varint(mv, pos)
                elif tag & 7 == 2:
                    skip, pos = read_varint(mv, pos)
                    pos += skip
                else:
                    raise StreamError(f"unexpected wire type in DataPiece field {tag >> 3}")
        if pos != stop or stop > end:
            raise StreamError("malformed DataPiece")
        if index != node:
            if index < node or index >= len(sizes) or offset != sizes[node]:
                raise StreamError("load stream pieces out of order")
            if any(sizes[node + 1:index]):
                raise StreamError("load stream skipped a node's data")
            node = index
            offset = 0
        if off != offset or n > sizes[node] - offset:
            raise StreamError("load stream piece out of range")
        target = targets[node]
        if target is not None:
            if target.__class__ is not memoryview and target.__class__ is not int:
                target = targets[node] = make(node)
            if target.__class__ is int:
                if n:
                    ctypes.memmove(target + off, bytes(mv[start:start + n]), n)
            else:
                target[off:off + n] = mv[start:start + n]
            if on_complete is not None and off + n == sizes[node]:
                on_complete(node)
        offset += n
        received += n
    return node, offset, received


python_scatter = scatter


# Node.value's fields by name (their numbers in checkpoint.proto).
_VALUE_FIELDS = {"dict": 3, "list": 4, "tuple": 5, "none": 6, "bool_value": 7, "int_value": 8,
                 "float_value": 9, "string_value": 10, "tensor": 11, "bytes": 12}
NODE_TENSOR = 11
NODE_BYTES = 12
NODE_CONTAINERS = (3, 4, 5)

# (value field, key, dtype, shape, device, requires_grad, size)
Facts = Tuple[int, Any, int, Tuple[int, ...], str, bool, int]


def facts_of(node: Any) -> Facts:
    """What a load reads of one node, through the protobuf runtime: the
    number of its value field (0: none), its key (str, int or None), for a
    tensor its dtype, shape, device and requires_grad, and its size (a
    tensor's or bytes leaf's data bytes, a container's children; else 0)."""
    which = node.WhichOneof("key")
    key = node.str_key if which == "str_key" else node.int_key if which == "int_key" else None
    which = node.WhichOneof("value")
    field = _VALUE_FIELDS.get(which, 0)
    if field == NODE_TENSOR:
        meta = node.tensor
        return (field, key, meta.dtype, tuple(meta.shape[:]), meta.device, meta.requires_grad,
                meta.data.size)
    size = 0
    if field == NODE_BYTES:
        size = node.bytes.data.size
    elif field in NODE_CONTAINERS:
        size = getattr(node, which).size
    return (field, key, 0, (), "", False, size)


def python_node_facts(batch: Any, nodes: List[Any]) -> List[Any]:
    """node_facts's Python version: None for every node (read them all
    through the protobuf runtime)."""
    return [None] * len(nodes)


def node_facts(batch: Any, nodes: List[Any]) -> List[Facts]:
    """facts_of for each node of a NodeBatch: ``batch`` is its serialized
    bytes, ``nodes`` the same batch parsed by protobuf. The C accelerator
    reads the bytes in one pass (~20x faster than protobuf's accessors) for
    nodes in the encoding protobuf writers produce; any other node is read
    through ``nodes``."""
    facts = _facts_from_bytes(batch, nodes)
    if len(facts) != len(nodes):
        facts = [None] * len(nodes)
    for i, f in enumerate(facts):
        if f is None:
            facts[i] = facts_of(nodes[i])
    return facts


_facts_from_bytes = python_node_facts
next_frame = python_next_frame
copy_into = python_copy_into
digest = python_digest
# The C encoder of a tensor's Node (_speedups.tensor_node), if built.
tensor_node: Optional[Callable[..., Tuple[bytes, List[bytes]]]] = None
# Whether chunk sources may be (address, length) tuples: the C accelerator
# reads them in place (Python would copy them).
ADDRESS_SOURCES = False
# The same function in C (_speedups.c) when it was built, unless
# CKPT_PURE_PYTHON=1.
try:
    from ckpt import _speedups
except ImportError:
    _speedups = None  # type: ignore[assignment]
if _speedups is not None:
    _speedups.init(StreamError)
    if os.environ.get("CKPT_PURE_PYTHON") != "1":
        scatter = _speedups.scatter  # noqa: F811
        _facts_from_bytes = lambda batch, nodes: _speedups.node_facts(batch)  # noqa: E731
        next_frame = _speedups.next_frame  # noqa: F811
        copy_into = _speedups.copy_into  # noqa: F811
        if hasattr(_speedups, "digest"):  # built with xxhash.h
            digest = _speedups.digest  # noqa: F811
            ADDRESS_SOURCES = True
            tensor_node = _speedups.tensor_node
