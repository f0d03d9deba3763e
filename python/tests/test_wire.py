"""The load path's hot loops, _wire.scatter and _wire.node_facts, in their two
implementations: the C accelerator (_speedups.c, built by the package's
install) and the Python one (CKPT_PURE_PYTHON=1). Both must copy the same
bytes to the same places, call back at the same points, refuse the same
malformed streams, and read the same facts of every node, however encoded."""

from __future__ import annotations

import ctypes
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


FRAMERS = [pytest.param(_wire.python_next_frame, id="python")]
if _speedups() is not None:
    FRAMERS.append(pytest.param(_speedups().next_frame, id="c"))


def _all_frames(next_frame, chunks, limit, whole):
    """Every frame ``next_frame`` makes of ``chunks`` [(digest, source)],
    calling it until it answers None at the end of the list."""
    out = []
    index = offset = 0
    while True:
        frame, index, offset = next_frame(chunks, index, offset, limit, whole)
        if frame is None:
            assert index == len(chunks) and offset == 0
            return out
        out.append(frame)


def _frames(next_frame, limit, chunks, whole=False):
    """The frames ``next_frame`` makes of ``chunks`` [(digest, bytes)]: their
    sizes, and each parsed back into a list of (digest, offset, data)."""
    from ckpt.v1 import checkpoint_pb2 as pb
    listed = [(digest, memoryview(data)) for digest, data in chunks]
    out = _all_frames(next_frame, listed, limit, whole)
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


@pytest.mark.parametrize("next_frame", FRAMERS)
def test_a_chunk_that_fits_a_frame_is_never_split(next_frame):
    """As the C++ client (SendChunks): each piece counts its data and
    PIECE_FRAMING (40) against the limit; a chunk that does not fit the rest
    of a frame starts the next one; only a chunk larger than a frame is cut,
    at frame boundaries."""
    rng = random.Random(5)
    sizes = [300, 500, 200, 960, 959, 2500, 1]
    chunks = [(bytes([i]) * 16, rng.randbytes(n)) for i, n in enumerate(sizes)]
    _, frames = _frames(next_frame, 1000, chunks)
    _reassembled(chunks, frames)
    # 300 + 500 share a frame (340 + 540 <= 1000), 200 does not fit after
    # them; 2500 is cut into 960s, and 1 joins its last 580.
    assert [[len(d) for _, _, d in frame] for frame in frames] == [
        [300, 500], [200], [960], [959], [960], [960], [580, 1]]


@pytest.mark.parametrize("next_frame", FRAMERS)
def test_whole_chunks_go_alone_in_their_frames(next_frame):
    rng = random.Random(6)
    sizes = [300, 2500, 700, 3000, 100]
    chunks = [(bytes([i]) * 16, rng.randbytes(n)) for i, n in enumerate(sizes)]
    _, frames = _frames(next_frame, 1000, chunks, whole=True)
    _reassembled(chunks, frames)
    assert [[len(d) for _, _, d in frame] for frame in frames] == [
        [300], [2500], [700], [3000], [100]]


@pytest.mark.parametrize("next_frame", FRAMERS)
def test_many_small_pieces_stay_within_a_piece_message(next_frame):
    """However many pieces share a frame, it stays within 1 MiB (a server
    accepts 1 MiB + 64 KiB at least): 30,000 chunks of 30 bytes."""
    chunks = [(i.to_bytes(16, "little"), bytes([i % 251]) * 30) for i in range(30000)]
    sizes, frames = _frames(next_frame, _wire.PIECE_BYTES, chunks, whole=True)
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


@pytest.mark.parametrize("scatter", IMPLEMENTATIONS)
def test_pieces_land_at_addresses(scatter):
    """A target may be the address of memory the caller holds (a tensor's
    data_ptr): the pieces land there, make is not called for it."""
    rng = random.Random(8)
    sizes = [5, 70000, 3]
    data = [rng.randbytes(n) for n in sizes]
    memory = [ctypes.create_string_buffer(n) for n in sizes]
    targets = [ctypes.addressof(memory[0]), ctypes.addressof(memory[1]), True]
    made, completed = [], []

    def make(i):
        made.append(i)
        return memoryview(bytearray(sizes[i]))

    msgs = [message(piece(0, 0, data[0]), piece(1, 0, data[1][:40000])),
            message(piece(1, 40000, data[1][40000:]), piece(2, 0, data[2]))]
    node = offset = 0
    for m in msgs:
        node, offset, _ = scatter(m, node, offset, sizes, targets, make, completed.append)
    assert [m.raw for m in memory[:2]] == data[:2]
    assert bytes(targets[2]) == data[2]
    assert made == [2]
    assert completed == [0, 1, 2]


def _speedups_or_skip():
    c = _speedups()
    if c is None:
        pytest.skip("the C accelerator is not built (test_the_c_accelerator_is_built fails)")
    return c


def _random_batch(rng):
    from ckpt.v1 import checkpoint_pb2 as pb
    batch = pb.NodeBatch()
    root = batch.nodes.add()
    root.dict.size = 0
    for i in range(rng.randint(1, 12)):
        node = batch.nodes.add()
        root.dict.size += 1
        if rng.random() < 0.5:
            node.str_key = rng.choice(["w", "é", "a/b", "", "x" * 300])
        elif rng.random() < 0.5:
            node.int_key = rng.randint(-(1 << 40), 1 << 40)
        kind = rng.randint(0, 7)
        if kind == 0:
            node.tensor.dtype = rng.randint(0, 20)
            node.tensor.shape.extend(rng.randint(0, 1 << 33) for _ in range(rng.randint(0, 4)))
            node.tensor.device = rng.choice(["", "cpu", "cuda:1"])
            node.tensor.requires_grad = rng.random() < 0.5
            if rng.random() < 0.8:
                node.tensor.data.size = rng.randint(0, 1 << 40)
                node.tensor.data.chunk_size = 4 << 20
                node.tensor.data.chunks.extend(rng.randbytes(16) for _ in range(rng.randint(0, 3)))
            if rng.random() < 0.5:
                node.tensor.stats.count = 3
                node.tensor.stats.mean = 0.5
        elif kind == 1:
            node.bytes.data.size = rng.randint(0, 1 << 20)
        elif kind == 2:
            getattr(node, rng.choice(["list", "tuple", "dict"])).size = 0
        elif kind == 3:
            node.none.SetInParent()
        elif kind == 4:
            node.int_value = rng.randint(-5, 5)
        elif kind == 5:
            node.float_value = rng.random()
        elif kind == 6:
            node.string_value = "s" * rng.randint(0, 3)
        else:
            node.bool_value = True
    return batch


def test_node_facts_agree_with_protobuf():
    """The C reader returns what protobuf's accessors read (facts_of) for
    every node protobuf writers encode; for legal encodings they do not
    write (fields repeated or out of order, a shape not packed: protobuf's
    merging rules apply) it answers None and node_facts asks protobuf."""
    from ckpt.v1 import checkpoint_pb2 as pb
    c = _speedups_or_skip()
    rng = random.Random(12)
    for trial in range(300):
        batch = _random_batch(rng)
        raw = batch.SerializeToString()
        expected = [_wire.facts_of(n) for n in batch.nodes]
        assert c.node_facts(raw) == expected, f"trial {trial}"
        assert _wire.node_facts(raw, batch.nodes) == expected
    # Non-canonical encodings of one node: each is legal protobuf.
    def node_bytes(fields):
        body = b"".join(fields)
        return b"\x0a" + _wire.varint(len(body)) + body

    def tensor(*fields):
        body = b"".join(fields)
        return b"\x5a" + _wire.varint(len(body)) + body  # Node.tensor = 11

    data = b"\x2a\x02\x08\x20"  # TensorMeta.data {size: 32}
    cases = [
        node_bytes([tensor(b"\x08\x01", data), tensor(b"\x08\x02")]),  # tensor twice: merged
        node_bytes([tensor(b"\x08\x01", b"\x10\x02", b"\x10\x03", data)]),  # shape unpacked
        node_bytes([tensor(data, b"\x08\x01")]),  # fields out of order
        node_bytes([b"\x40\x05", b"\x0a\x01k"]),  # int_value, then the key
        node_bytes([tensor(b"\x08\x01", data), b"\x62\x00"]),  # tensor, then bytes
    ]
    for raw in cases:
        batch = pb.NodeBatch.FromString(raw)
        expected = [_wire.facts_of(n) for n in batch.nodes]
        from_c = c.node_facts(raw)
        assert len(from_c) == 1
        assert from_c[0] is None or from_c == expected, (raw, from_c, expected)
        assert _wire.node_facts(raw, batch.nodes) == expected
    # The canonical cases the C reader does read:
    assert c.node_facts(cases[4])[0] is not None  # a later value field wins: bytes
    # Encodings the C reader does not decode at all (protobuf does): a group
    # (wire types 3/4) inside a node, an overlong 10-byte varint, a
    # NodeBatch.nodes field that is not length-delimited. node_facts asks
    # protobuf for those nodes (or the whole batch).
    group = b"\x6b\x08\x01\x6c"  # field 13 as a group holding a varint
    overlong = b"\x40" + b"\xff" * 9 + b"\x7f"  # int_value, 10 bytes, top byte > 1
    for raw, whole_batch in [
        (node_bytes([tensor(b"\x08\x01", data), group]), False),
        (node_bytes([tensor(b"\x08\x01", group, data)]), False),
        (node_bytes([b"\x0a\x01k", overlong]), False),
        (node_bytes([b"\x0a\x01k", tensor(b"\x08\x01")]) + b"\x08\x05", True),
        (node_bytes([tensor(b"\x08\x01", data)]) + group, True),
    ]:
        batch = pb.NodeBatch.FromString(raw)
        expected = [_wire.facts_of(n) for n in batch.nodes]
        from_c = c.node_facts(raw)
        assert from_c == [] if whole_batch else from_c == [None], (raw, from_c)
        assert _wire.node_facts(raw, batch.nodes) == expected


def test_a_tensor_whose_bytes_disagree_with_its_shape_is_refused():
    """A load writes a tensor's bytes at its address only when the tree's
    data size is exactly the tensor's (a server that says more is refused
    before any byte is written)."""
    import torch
    from ckpt import _load
    from ckpt.errors import Internal
    facts = [(3, None, 0, (), "", False, 1), (11, "w", 1, (2, 3), "cpu", False, 25)]
    sink = _load._ValueSink(None)
    with pytest.raises(Internal, match="'w': the checkpoint holds 25 bytes of data, its "
                                       "shape and dtype make 24"):
        sink.on_tree(None, [None, None], facts)
    # Less, even none: the tensor would keep uninitialized memory.
    for size in (23, 0):
        sink = _load._ValueSink(None)
        with pytest.raises(Internal, match=f"holds {size} bytes of data"):
            sink.on_tree(None, [None, None], facts[:1] + [facts[1][:6] + (size,)])
    for module in ({"w": torch.zeros(2, 3)}, {"w": torch.zeros(3, 2).t()}):
        # (a contiguous destination takes the bytes in place, a transposed
        # one through a staging buffer: both are checked)
        sink = _load._InPlaceSink(module, "", "", None, True, "M")
        with pytest.raises(Internal, match="'w': the checkpoint holds 25 bytes"):
            sink.on_tree(None, [None, None], facts)


@pytest.mark.parametrize("scatter", IMPLEMENTATIONS)
def test_a_skipped_node_is_refused(scatter):
    """A piece may pass over nodes without data only (as the C++ client)."""
    out, _, _, end = run(scatter, [message(piece(0, 0, b"a" * 8), piece(2, 0, b"c" * 8))],
                         [8, 0, 8], [True, True, True])
    assert (out[0], out[2], end) == (b"a" * 8, b"c" * 8, (2, 8, 16))
    with pytest.raises(_wire.StreamError, match="load stream skipped a node's data"):
        run(scatter, [message(piece(0, 0, b"a" * 8), piece(2, 0, b"c" * 8))], [8, 8, 8],
            [True, True, True])


@pytest.mark.parametrize("scatter", IMPLEMENTATIONS)
def test_a_position_past_the_node_is_refused(scatter):
    with pytest.raises(_wire.StreamError):
        scatter(message(piece(0, 9, b"x")), 0, 9, [8, 8], [True, True],
                lambda i: memoryview(bytearray(8)), None)


def test_both_framers_make_the_same_frames_from_buffers_and_addresses():
    """Random chunk sizes (empty ones too), limits and modes: the C framer
    makes byte-identical frames to the Python one, from memoryviews and from
    (address, length) sources alike; digests agree with xxhash."""
    import xxhash
    c = _speedups_or_skip()
    rng = random.Random(13)
    for trial in range(200):
        limit = rng.choice([41, 100, 1000, 5000])
        whole = rng.random() < 0.5
        datas = [rng.randbytes(rng.choice([0, 1, 39, 60, 999, 1000, 7000])) for _ in
                 range(rng.randint(0, 12))]
        memory = [ctypes.create_string_buffer(d, len(d)) for d in datas]
        chunks = [(bytes([i]) * 16, memoryview(d)) for i, d in enumerate(datas)]
        at = [(bytes([i]) * 16, (ctypes.addressof(m) if len(d) else 0, len(d)))
              for i, (m, d) in enumerate(zip(memory, datas))]
        expected = _all_frames(_wire.python_next_frame, chunks, limit, whole)
        for source in (chunks, at):
            assert _all_frames(c.next_frame, source, limit, whole) == expected, f"trial {trial}"
        for (_, mv), (_, addr) in zip(chunks, at):
            want = xxhash.xxh3_128(mv).digest()
            assert _wire.python_digest(mv) == want
            if hasattr(c, "digest"):
                assert c.digest(mv) == want and c.digest(addr) == want


def test_the_framer_refuses_what_is_not_a_chunk():
    c = _speedups_or_skip()
    with pytest.raises(TypeError):
        c.next_frame([(b"short", b"x")], 0, 0, 1000, False)
    with pytest.raises(ValueError):
        c.next_frame([(b"d" * 16, (0, 5))], 0, 0, 1000, False)  # no memory
    with pytest.raises(ValueError):
        c.next_frame([(b"d" * 16, b"abc")], 0, 4, 1000, False)  # offset past the end
    with pytest.raises(ValueError):
        c.next_frame([(b"d" * 16, b"abc")], 0, 0, 40, False)  # no room for a piece


def test_tensor_nodes_encode_as_protobuf_does():
    """_speedups.tensor_node writes the Node Entry.fill writes through
    protobuf (with the chunk digests and statistics the save adds): random
    keys, dtypes, shapes, devices, sizes, chunkings, statistics."""
    import torch
    import xxhash
    from ckpt import _tree
    from ckpt.v1 import checkpoint_pb2 as pb
    c = _speedups_or_skip()
    if not hasattr(c, "tensor_node"):
        pytest.skip("the C accelerator was built without xxhash.h")
    rng = random.Random(14)
    for trial in range(300):
        key = rng.choice([None, "", "w", "é/ß", rng.randint(-(1 << 62), 1 << 62)])
        e = _tree.Entry(key, "tensor")
        e.dtype = rng.randint(0, 20)
        e.shape = tuple(rng.randint(0, 1 << 40) for _ in range(rng.randint(0, 4)))
        e.device = rng.choice(["cpu", "", "cuda:3"])
        e.requires_grad = rng.random() < 0.5
        e.size = rng.choice([0, 1, 100, 4096, 10000])
        chunk_size = rng.choice([1, 100, 4096, 1 << 22])
        payload = rng.randbytes(e.size)
        t = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if e.size else None
        stats = None
        if rng.random() < 0.5:
            message = pb.TensorStats()
            if rng.random() < 0.7:
                message.count = rng.randint(0, 9)
                message.mean = rng.random()
            stats = message
        expected = pb.Node()
        ref = e.fill(expected)
        digests = []
        if e.size:
            ref.chunk_size = chunk_size
            digests = [xxhash.xxh3_128(payload[o:o + chunk_size]).digest()
                       for o in range(0, e.size, chunk_size)]
            ref.chunks.extend(digests)
        if stats is not None:
            expected.tensor.stats.CopyFrom(stats)
            expected.tensor.stats.SetInParent()
        sources = [None] if not e.size else [memoryview(payload), (t.data_ptr(), e.size)]
        for source in sources:
            encoded, got = c.tensor_node(e.key, e.dtype, e.shape, e.device, e.requires_grad,
                                         e.size, chunk_size, source,
                                         None if stats is None else stats.SerializeToString())
            node = pb.Node.FromString(encoded)
            assert node == expected, f"trial {trial}: {node} != {expected}"
            assert node.HasField("tensor") and node.tensor.HasField("data")
            assert node.tensor.HasField("stats") == (stats is not None)
            assert node.WhichOneof("key") == expected.WhichOneof("key")
            assert got == digests
    with pytest.raises(ValueError, match="3 bytes given, 4 declared"):
        c.tensor_node("w", 1, (1,), "cpu", False, 4, 4, b"abc", None)


def test_str_and_int_subclass_keys_save_as_their_values():
    """A str Enum or IntEnum dict key is stored as its text or number, through
    protobuf (Entry.fill) and the C encoder alike."""
    import enum
    from ckpt import _tree
    from ckpt.v1 import checkpoint_pb2 as pb

    class K(str, enum.Enum):
        W = "w"

    class I(enum.IntEnum):
        SEVEN = 7

    for key, field, value in [(K.W, "str_key", "w"), (I.SEVEN, "int_key", 7)]:
        e = _tree.Entry(key, "tensor")
        e.dtype, e.shape, e.device, e.size = 1, (0,), "cpu", 0
        node = pb.Node()
        e.fill(node)
        assert node.WhichOneof("key") == field and getattr(node, field) == value
        c = _speedups()
        if c is not None and hasattr(c, "tensor_node"):
            encoded, _ = c.tensor_node(key, 1, (0,), "cpu", False, 0, 4, None, None)
            assert pb.Node.FromString(encoded) == node


def test_snapshot_copies_agree_and_stay_in_the_buffer():
    """copy_into (an async save's snapshot) in C and Python: the same bytes
    land at the same offsets; a copy past the buffer is refused. Over 32 MiB
    in all, so that the C copy shares the bytes between threads (splitting
    copies where the shares meet)."""
    rng = random.Random(15)
    datas = [rng.randbytes(n) for n in (0, 1, 100, 70000, 23_000_001, 3, 19_000_000, 5)]
    memory = [ctypes.create_string_buffer(d, len(d)) for d in datas]
    copies, off = [], 0
    for m, d in zip(memory, datas):
        copies.append((ctypes.addressof(m) if d else 0, off, len(d)))
        off += len(d) + 7
    implementations = [_wire.python_copy_into]
    if _speedups() is not None:
        implementations.append(_speedups().copy_into)
    for copy_into in implementations:
        buffer = bytearray(off)
        copy_into(buffer, copies)
        for (_, at, n), d in zip(copies, datas):
            assert bytes(buffer[at:at + n]) == d
        gaps = [(at + n, copies[i + 1][1] if i + 1 < len(copies) else off)
                for i, (_, at, n) in enumerate(copies)]
        assert all(buffer[lo:hi] == bytes(hi - lo) for lo, hi in gaps)  # nothing else written
        for bad in ([(copies[3][0], off - 10, 70000)], [(0, 0, 5)], [(copies[2][0], -1, 1)]):
            with pytest.raises(ValueError):
                copy_into(buffer, bad)


def test_node_facts_agree_with_protobuf_on_corrupted_batches():
    """Bytes a hostile server could send: random batches with bytes flipped,
    cut or inserted. Whatever protobuf accepts, node_facts reads exactly as
    protobuf's accessors do (the C reader answers None where unsure); it never
    fails on what protobuf parsed."""
    from google.protobuf.message import DecodeError
    from ckpt.v1 import checkpoint_pb2 as pb
    c = _speedups_or_skip()
    rng = random.Random(16)
    accepted = 0
    for trial in range(3000):
        raw = bytearray(_random_batch(rng).SerializeToString())
        for _ in range(rng.randint(1, 3)):
            what = rng.random()
            at = rng.randrange(len(raw) + 1)
            if what < 0.6 and at < len(raw):
                raw[at] = rng.getrandbits(8)
            elif what < 0.8:
                raw[at:at] = bytes([rng.getrandbits(8)])
            else:
                del raw[at:]
        raw = bytes(raw)
        try:
            batch = pb.NodeBatch.FromString(raw)
        except DecodeError:
            continue
        accepted += 1
        expected = [_wire.facts_of(n) for n in batch.nodes]
        from_c = c.node_facts(raw)
        if from_c:
            assert len(from_c) == len(expected), f"trial {trial}"
            for got, want in zip(from_c, expected):
                assert got is None or got == want, f"trial {trial}: {got} != {want}"
        assert _wire.node_facts(raw, batch.nodes) == expected, f"trial {trial}"
    assert accepted > 300  # the test must exercise accepted corruptions
