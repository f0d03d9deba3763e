"""Hand-built protobuf frames for the data path (internal).

Chunk data goes up and tensor data comes down in ``bytes`` fields of at most
1 MiB. Building those messages with the protobuf runtime would copy every byte
into a Python ``bytes`` and then again into the serialized message; here a
ChunkBatch is assembled by joining small headers and memoryviews of the
tensors (one copy), and a DataBatch is parsed in place (its pieces are
memoryview slices of the received message, copied once into the tensors).

Wire format (proto3): a field is ``varint(number << 3 | wire_type)`` followed
by a varint (wire type 0) or ``varint(length)`` and the bytes (wire type 2).
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

# Field tags used below.
_SAVE_REQUEST_CHUNKS = b"\x1a"  # SaveRequest.chunks = 3 (ChunkBatch)
_CHUNK_BATCH_PIECES = b"\x0a"  # ChunkBatch.pieces = 1 (ChunkPiece)
_PIECE_DIGEST = b"\x0a\x10"  # ChunkPiece.digest = 1, always 16 bytes
_PIECE_OFFSET = b"\x10"  # ChunkPiece.offset = 2 (varint)
_PIECE_DATA = b"\x1a"  # ChunkPiece.data = 3

# LoadResponse oneof fields.
LOAD_HEADER = 1
LOAD_NODES = 2
LOAD_DATA = 3


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


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
            raise ValueError("malformed varint")


class ChunkFrames:
    """Packs chunk pieces into SaveRequest{chunks: ChunkBatch} frames of about
    ``limit`` data bytes each."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._parts: List[object] = []
        self._body = 0  # ChunkBatch bytes so far
        self._data = 0  # data bytes so far

    def add_chunk(self, digest: bytes, data: memoryview) -> Iterator[bytes]:
        """Adds one chunk (split into pieces as needed); yields complete frames."""
        n = len(data)
        if n <= self.limit - self._data:  # the common case: one piece, no frame yet
            head = _PIECE_DIGEST + digest + _PIECE_DATA + varint(n)
            lead = _CHUNK_BATCH_PIECES + varint(len(head) + n) + head
            self._parts.append(lead)
            self._parts.append(data)
            self._body += len(lead) + n
            self._data += n
            return
        off = 0
        while off < n:
            if self._data >= self.limit:
                yield self.flush()
            take = min(n - off, self.limit - self._data)
            head = _PIECE_DIGEST + digest
            if off:
                head += _PIECE_OFFSET + varint(off)
            head += _PIECE_DATA + varint(take)
            piece_len = len(head) + take
            lead = _CHUNK_BATCH_PIECES + varint(piece_len) + head
            self._parts.append(lead)
            self._parts.append(data[off:off + take])
            self._body += len(lead) + take
            self._data += take
            off += take

    def flush(self) -> bytes:
        """The frame of the pieces added so far (b"" if none)."""
        if not self._parts:
            return b""
        frame = b"".join([_SAVE_REQUEST_CHUNKS, varint(self._body), *self._parts])
        self._parts = []
        self._body = 0
        self._data = 0
        return frame


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
