"""The Python client and the C++ client core speak the protocol the same way: the
same value saved by both gives the same stored tree (keys, dtypes, shapes, chunk
size, XXH3-128 chunk digests), so either dedups the other's chunks. Plus the
cases of tests/client/client_test.cc not covered elsewhere."""

from __future__ import annotations

import collections
import concurrent.futures
import subprocess
import time

import pytest
import torch

import ckpt
from serverproc import ServerProcess, cli_binary


def manifest(client, name):
    return [(e.key, e.kind, e.dtype, e.shape, e.requires_grad, e.size, e.value)
            for e in client.show(name).entries]


def raw_nodes(client, name):
    from ckpt.v1 import checkpoint_pb2 as pb
    response = client.stub.GetManifest(pb.GetManifestRequest(name=name), timeout=30)
    return list(response.nodes)


def test_same_tree_and_digests_as_the_cpp_client(client, server, name, tmp_path):
    torch.manual_seed(0)
    value = collections.OrderedDict(
        [("w", torch.randn(1500, 1024)),  # 6 MB: two chunks, the last one partial
         ("bf16", torch.randn(33, 7).to(torch.bfloat16)),
         ("flags", torch.tensor([True, False, True])),
         ("c", torch.randn(5, dtype=torch.complex128)),
         ("i", torch.arange(-5, 5, dtype=torch.int16)),
         ("scalar", torch.tensor(2.5, dtype=torch.float64)),
         ("empty", torch.zeros(0, 4)),
         ("p", torch.nn.Parameter(torch.randn(4))),
         ("meta", {"epoch": 3, "lr": 0.5, "name": "x", "none": None, "ok": True,
                   "ids": [1, 2, 3], "pair": (4, 5)}),
         ("state", {0: {"step": torch.tensor(1.0)}, 1: {"step": torch.tensor(2.0)}})])
    path = tmp_path / "value.pt"
    torch.save(value, path)
    out = subprocess.run([cli_binary(), "--server", server.address, "import", str(path),
                          name + "-cpp"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    saved = client.save(value, name + "-py", tensor_stats=True)
    assert saved.bytes_sent == 0 and saved.new_bytes == 0, "the C++ client's chunks are reused"
    assert manifest(client, name + "-py") == manifest(client, name + "-cpp")
    py_nodes, cpp_nodes = raw_nodes(client, name + "-py"), raw_nodes(client, name + "-cpp")
    assert len(py_nodes) == len(cpp_nodes)
    for a, b in zip(py_nodes, cpp_nodes):
        # Statistics: the same counts and extremes (element values), moments
        # to float precision (torch's reductions vs the C++ pass).
        if a.HasField("tensor"):
            assert a.tensor.HasField("stats") == b.tensor.HasField("stats"), (a, b)
            sa, sb = a.tensor.stats, b.tensor.stats
            assert (sa.count, sa.nan, sa.pos_inf, sa.neg_inf, sa.min, sa.max) == \
                (sb.count, sb.nan, sb.pos_inf, sb.neg_inf, sb.min, sb.max), (a, b)
            for field in ("mean", "std", "l2"):
                assert getattr(sa, field) == pytest.approx(getattr(sb, field), rel=1e-5,
                                                           abs=1e-6), (field, a, b)
            a.tensor.ClearField("stats")
            b.tensor.ClearField("stats")
        assert a == b, (a, b)


def test_shared_storage_is_stored_once(client, name):
    base = torch.randn(1 << 20)
    saved = client.save({"a": base, "b": base, "view": base[: 1 << 19]}, name)
    assert saved.data_bytes == 4 * ((1 << 21) + (1 << 19))
    assert saved.new_bytes == 4 * ((1 << 20) + (1 << 19))
    back = client.load(name)
    assert torch.equal(back["a"], base) and torch.equal(back["view"], base[: 1 << 19])


def test_ten_thousand_tensors(client, name):
    value = {f"t{i}": torch.full((3,), float(i)) for i in range(10000)}
    saved = client.save(value, name)
    assert saved.info.num_tensors == 10000
    back = client.load(name)
    assert list(back) == list(value)
    assert all(torch.equal(back[k], v) for k, v in value.items())


def test_multi_rank_save_and_per_rank_restore(client, name):
    def part(rank):
        return client.save({f"rank{rank}.w": torch.full((4,), float(rank))}, name, rank=rank,
                           world_size=3, save_id="step-1", step=1)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(part, range(3)))
    assert {r.version for r in results} == {1}
    assert client.versions(name)[0].world_size == 3
    back = client.load(name)
    assert list(back) == ["rank0.w", "rank1.w", "rank2.w"]
    mine = client.load(name, keys=["rank1.*"])
    assert list(mine) == ["rank1.w"] and torch.equal(mine["rank1.w"], torch.ones(4))


def test_server_down_is_unavailable_within_the_deadline():
    t0 = time.monotonic()
    with pytest.raises(ckpt.Unavailable):
        ckpt.Client("127.0.0.1:1", timeout=3).save({"x": torch.ones(1)}, "x/y")
    with pytest.raises(ckpt.Unavailable):
        ckpt.Client("127.0.0.1:1", timeout=3).load("x/y")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("limit,assembled", [(4 << 20, 4), ((4 << 20) + (64 << 10) - 1, 4),
                                             ((4 << 20) + (64 << 10), 0)])
def test_chunks_go_whole_or_in_pieces_as_the_server_allows(limit, assembled):
    """Like ServiceTest.ChunksAreStoredTheSameWhetherSentWholeOrInPieces: a
    chunk over 1 MiB goes whole, alone in its message, only to a server whose
    messages hold it and 64 KiB more (the server then joins no pieces); no
    message exceeds the server's limit (it would refuse it), however many
    small chunks share one; the values load back equal."""
    torch.manual_seed(1)
    value = collections.OrderedDict(
        [("big", torch.randn((9 << 20) // 4 + 1)),  # chunks of 4, 4 and 1 MiB + 4
         ("piece", torch.randn((1 << 18) + 1)),  # 1 MiB + 4
         *[(f"s{i}", torch.randn(350)) for i in range(3000)]])  # 4.2 MB of 1,400 B
    server = ServerProcess(["--max-message-bytes", str(limit)])
    try:
        with ckpt.Client(server.address) as client:
            saved = client.save(value, "framing/m")
            assert saved.bytes_sent == sum(t.numel() * 4 for t in value.values())
            assert server.metric("ckpt_assembled_chunks_total") == assembled
            back = client.load("framing/m")
            assert list(back) == list(value)
            for k, t in value.items():
                assert torch.equal(back[k], t), k
    finally:
        server.close()
