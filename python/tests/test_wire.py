"""The load path's hot loop, _wire.scatter, in its two implementations: the C
accelerator (_speedups.c, built by the package's install) and the Python one
(CKPT_PURE_PYTHON=1). Both must copy the same bytes to the same places, call
back at the same points, and refuse the same malformed streams."""

from __future__ import annotations

import os
import random

import pytest

from ckpt import _wire


def _speedups():
    try:
        from ckpt import _speedups as module
    except ImportError:
        return None
    return module


IMPLEMENTATIONS = [pytest.param(_wire.python_scatter, id="python")]
if _speedups() is not None:
    IMPLEMENTATIONS.append(pytest.param(_speedups().scatter, id="c"))


def test_the_c_accelerator_is_built_and_used():
    """The package's install builds it; _wire.scatter is it unless CKPT_PURE_PYTHON=1."""
    module = _speedups()
    assert module is not None, "ckpt._speedups was not built (scripts/install-deps.sh --python)"
    if os.environ.get("CKPT_PURE_PYTHON") == "1":
        assert _wire.scatter is _wire.python_scatter
    else:
        assert _wire.scatter is module.scatter


def piece(index: int, offset: int, data: bytes, extra: bytes = b"") -> bytes:
    body = b""
    if index:
        body += b"\x08" + _wire.varint(index)
    if offset:
        body += b"\x10" + _wire.varint(offset)
    body += extra + b"\x1a" + _wire.varint(len(data)) + data
    return b"\x0a" + _wire.varint(len(body)) + body


def message(*pieces: bytes) -> bytes:
    batch = b"".join(pieces)
    return b"\x1a" + _wire.varint(len(batch)) + batch


def run(scatter, msgs, sizes, wanted):
    """Feeds `msgs` through `scatter`; the targets' bytes, the calls of make
    and on_complete, and the final position."""
    targets = [None if not w else True for w in wanted]
    made, completed = [], []

    def make(i):
        made.append(i)
        return memoryview(bytearray(sizes[i]))

    node = offset = total = 0
    for m in msgs:
        node, offset, got = scatter(m, node, offset, sizes, targets, make, completed.append)
        total += got
    out = [bytes(t) if isinstance(t, memoryview) else t for t in targets]
    return out, made, completed, (node, offset, total)


@pytest.mark.parametrize("scatter", IMPLEMENTATIONS)
def test_pieces_land_in_place(scatter):
    rng = random.Random(7)
    sizes = [5, 0, 300, 70000, 1, 2]
    data = [bytes(rng.getrandbits(8) for _ in range(n)) for n in sizes]
    # Node 0 whole; node 2 in two pieces over two messages; node 3 in pieces
    # with an unknown varint field and an unknown bytes field; 4 skipped; 5.
    msgs = [
        message(piece(0, 0, data[0]), piece(2, 0, data[2][:100])),
        message(piece(2, 100, data[2][100:]), piece(3, 0, data[3][:65536], extra=b"\x20\x05")),
        message(piece(3, 65536, data[3][65536:], extra=b"\x2a\x03abc"), piece(4, 0, data[4]),
                piece(5, 0, data[5])),
    ]
    wanted = [True, False, True, True, False, True]
    out, made, completed, end = run(scatter, msgs, sizes, wanted)
    assert out == [data[0], None, data[2], data[3], None, data[5]]
    assert made == [0, 2, 3, 5]
    assert completed == [0, 2, 3, 5]
    assert end == (5, 2, sum(sizes))


@pytest.mark.parametrize("bad, why", [
    (b"", "expected data"),
    (b"\x12\x00", "expected data"),
    (b"\x1a\x05\x0a\x00", "malformed data message"),  # length past the end
    (message(b"\x12\x00"), "unexpected field 2 in DataBatch"),
    (message(piece(1, 0, b"x")), "out of order"),  # node 0 not complete
    (message(piece(0, 1, b"x")), "out of range"),  # offset not where the stream is
    (message(piece(0, 0, b"x" * 9)), "out of range"),  # past the tensor's end
    (message(piece(7, 0, b"x")), "out of order"),  # no such node
    (message(b"\x0a\x03\x1a\x05ab"), "malformed DataPiece"),  # data past the piece
    (message(b"\x0a\x02\x0d\x00"), "unexpected wire type"),  # fixed32: not in the protocol
])
@pytest.mark.parametrize("scatter", IMPLEMENTATIONS)
def test_malformed_streams_are_refused_alike(scatter, bad, why):
    with pytest.raises((_wire.StreamError, IndexError)) as raised:
        run(scatter, [bad], [8, 8], [True, True])
    if isinstance(raised.value, _wire.StreamError):
        assert why in str(raised.value)


def test_both_agree_on_odd_encodings():
    """A known field in a two-byte (non-canonical) tag is an unknown field to
    both; a varint past 64 bits is refused by both."""
    c = _speedups()
    if c is None:
        pytest.skip("the C accelerator is not built (test_the_c_accelerator_is_built fails)")
    odd_tag = message(b"\x0a\x04\x9a\x00\x01x")  # field 3 as 0x9a 0x00: skipped
    huge = message(b"\x0a\x0c\x10" + b"\xff" * 9 + b"\x7f")  # offset of 70 bits
    outcomes = []
    for msg in (odd_tag, huge):
        results = []
        for scatter in (_wire.python_scatter, c.scatter):
            try:
                results.append(("ok", run(scatter, [msg], [8, 8], [True, True])))
            except (_wire.StreamError, IndexError):
                results.append(("refused", None))
        assert results[0] == results[1], results
        outcomes.append(results[0][0])
    assert outcomes == ["ok", "refused"]


def test_both_agree_on_random_streams_and_corruptions():
    c = _speedups()
    if c is None:
        pytest.skip("the C accelerator is not built (test_the_c_accelerator_is_built fails)")
    rng = random.Random(11)
    for trial in range(300):
        sizes = [rng.choice([0, 1, 7, 100, 5000]) for _ in range(rng.randint(1, 6))]
        wanted = [rng.random() < 0.7 for _ in sizes]
        pieces = []
        for i, n in enumerate(sizes):
            off = 0
            while off < n:
                k = rng.randint(1, n - off)
                pieces.append(piece(i, off, bytes(rng.getrandbits(8) for _ in range(k))))
                off += k
        msg = bytearray(message(*pieces))
        if trial % 2 and len(msg) > 3:  # corrupt one byte past the frame's header
            msg[rng.randrange(3, len(msg))] = rng.getrandbits(8)
        results = []
        for scatter in (_wire.python_scatter, c.scatter):
            try:
                results.append(("ok", run(scatter, [bytes(msg)], sizes, wanted)))
            except (_wire.StreamError, IndexError):
                results.append(("refused", None))
        assert results[0] == results[1], f"trial {trial}: {results}"


def _frames(limit, chunks, whole=False):
    """The frames ChunkFrames makes of ``chunks`` [(digest, bytes)]: their
    sizes, and each parsed back into a list of (digest, offset, data)."""
    from ckpt.v1 import checkpoint_pb2 as pb
    frames = _wire.ChunkFrames(limit, whole)
    out = []
    for digest, data in chunks:
        out.extend(frames.add_chunk(digest, memoryview(data)))
    last = frames.flush()
    if last:
        out.append(last)
    parsed = []
    for frame in out:
        request = pb.SaveRequest.FromString(frame)
        assert request.WhichOneof("msg") == "chunks"
        parsed.append([(p.digest, p.offset, p.data) for p in request.chunks.pieces])
    return [len(frame) for frame in out], parsed


def _reassembled(chunks, frames):
    by_digest = {}
    for frame in frames:
        for digest, offset, data in frame:
            got = by_digest.setdefault(digest, [])
            assert offset == sum(len(d) for d in got)
            got.append(data)
    for digest, data in chunks:
        assert b"".join(by_digest[digest]) == data


def test_a_chunk_that_fits_a_frame_is_never_split():
    """As the C++ client (SendChunks): each piece counts its data and
    PIECE_FRAMING (40) against the limit; a chunk that does not fit the rest
    of a frame starts the next one; only a chunk larger than a frame is cut,
    at frame boundaries."""
    rng = random.Random(5)
    sizes = [300, 500, 200, 960, 959, 2500, 1]
    chunks = [(bytes([i]) * 16, rng.randbytes(n)) for i, n in enumerate(sizes)]
    _, frames = _frames(1000, chunks)
    _reassembled(chunks, frames)
    # 300 + 500 share a frame (340 + 540 <= 1000), 200 does not fit after
    # them; 2500 is cut into 960s, and 1 joins its last 580.
    assert [[len(d) for _, _, d in frame] for frame in frames] == [
        [300, 500], [200], [960], [959], [960], [960], [580, 1]]


def test_whole_chunks_go_alone_in_their_frames():
    rng = random.Random(6)
    sizes = [300, 2500, 700, 3000, 100]
    chunks = [(bytes([i]) * 16, rng.randbytes(n)) for i, n in enumerate(sizes)]
    _, frames = _frames(1000, chunks, whole=True)
    _reassembled(chunks, frames)
    assert [[len(d) for _, _, d in frame] for frame in frames] == [
        [300], [2500], [700], [3000], [100]]


def test_many_small_pieces_stay_within_a_piece_message():
    """However many pieces share a frame, it stays within 1 MiB (a server
    accepts 1 MiB + 64 KiB at least): 30,000 chunks of 30 bytes."""
    chunks = [(i.to_bytes(16, "little"), bytes([i % 251]) * 30) for i in range(30000)]
    sizes, frames = _frames(_wire.PIECE_BYTES, chunks, whole=True)
    _reassembled(chunks, frames)
    assert max(sizes) <= _wire.PIECE_BYTES
    assert len(frames) == 3  # 14,979 pieces (30 bytes + 40 counted) fill a frame


def test_whole_chunks_only_when_the_server_accepts_them():
    """rpc::SendsWholeChunks: a chunk goes whole when the server's messages
    hold it and 64 KiB more, and no client message exceeds 4 MiB + 64 KiB."""
    mib = 1 << 20
    assert _wire.sends_whole_chunks(4 * mib + (64 << 10), 4 * mib)
    assert not _wire.sends_whole_chunks(4 * mib + (64 << 10) - 1, 4 * mib)
    assert not _wire.sends_whole_chunks(4 * mib, 4 * mib)
    assert _wire.sends_whole_chunks(64 * mib, 2 * mib)
    assert not _wire.sends_whole_chunks(64 * mib, 4 * mib + 1)
