"""ckpt.dcp with real processes (torch.multiprocessing, gloo, CPU): 4 ranks save a
DTensor-sharded state_dict, 4, 2 and 1 ranks load it back (resharding); unchanged
shards are not sent again; a rank that dies leaves no version."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

import ckpt
from ckpt.dcp import CkptStorageReader, CkptStorageWriter, decode_metadata
from serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_state(step: int):
    """The full (unsharded) values of the job's state at a step."""
    g = torch.Generator().manual_seed(1234)
    model = {
        "embed.weight": torch.randn(64, 32, generator=g),
        "fc1.weight": torch.randn(48, 32, generator=g),
        "fc1.bias": torch.randn(48, generator=g),
        "fc2.weight": torch.randn(8, 48, generator=g).to(torch.bfloat16),
        "norm.weight": torch.randn(32, generator=g),  # replicated
        "scale": torch.tensor(1.5),  # 0-dim, replicated
        "counts": torch.arange(16, dtype=torch.int64).reshape(4, 4),
    }
    optim = {"fc1.weight.exp_avg": torch.randn(48, 32, generator=g),
             "embed.weight.exp_avg": torch.randn(64, 32, generator=g)}
    if step >= 2:
        model["fc1.weight"] = model["fc1.weight"] + step  # only this tensor changes
    return {"model": model, "optim": optim, "step": step, "config": {"lr": 0.1, "name": "x"}}


def sharded(state, mesh, shard_dim: int):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    def place(name, t):
        if t.dim() == 0 or name == "norm.weight":
            return distribute_tensor(t, mesh, [Replicate()])
        return distribute_tensor(t, mesh, [Shard(min(shard_dim, t.dim() - 1))])

    out = {k: v for k, v in state.items()}
    out["model"] = {k: place(k, v) for k, v in state["model"].items()}
    out["optim"] = {k: place(k, v) for k, v in state["optim"].items()}
    return out


def zeros_like_state(state):
    return {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()},
            "optim": {k: torch.zeros_like(v) for k, v in state["optim"].items()},
            "step": 0, "config": {"lr": 0.0, "name": ""}}


def init(rank: int, world: int, port: int):
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh("cpu", (world,))


def save_worker(rank, world, port, cid, out_dir):
    mesh = init(rank, world, port)
    report = {}
    for step in (1, 2):
        writer = CkptStorageWriter(step=step)
        dcp.save(sharded(full_state(step), mesh, 0), checkpoint_id=cid, storage_writer=writer)
        report[f"sent{step}"] = writer.bytes_sent
        if rank == 0:
            report[f"version{step}"] = writer.result.version
            report[f"new{step}"] = writer.result.new_bytes
    # dcp.async_save (thread executor): step 3.
    writer = CkptStorageWriter(step=3)
    future = dcp.async_save(sharded(full_state(3), mesh, 0), checkpoint_id=cid,
                            storage_writer=writer)
    future.result()
    if rank == 0:
        report["version3"] = writer.result.version
    with open(os.path.join(out_dir, f"save{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


def load_worker(rank, world, port, cid, shard_dim, step, out_dir, extra_cid):
    mesh = init(rank, world, port)
    expected = full_state(step)
    target = sharded(zeros_like_state(expected), mesh, shard_dim)
    reader = CkptStorageReader()
    dcp.load(target, checkpoint_id=cid, storage_reader=reader)
    for group in ("model", "optim"):
        for k, v in expected[group].items():
            got = target[group][k].full_tensor()
            assert got.dtype == v.dtype and torch.equal(got, v), f"rank {rank}: {group}/{k}"
    assert target["step"] == step and target["config"] == expected["config"], target["step"]
    # What this rank's plan asks for: its local shards (replicated tensors whole).
    local = sum(t.to_local().numel() * t.element_size()
                for g in ("model", "optim") for t in target[g].values())
    report = {"received": reader.tensor_bytes_received, "local": local,
              "other": reader.bytes_received - reader.tensor_bytes_received}
    if extra_cid:
        # A matrix saved by one process in 1 KiB row blocks, loaded row-sharded:
        # each rank fetches only its rows.
        from torch.distributed.tensor import Shard, distribute_tensor
        full = torch.arange(64 * 256, dtype=torch.float32).reshape(64, 256)
        tgt = {"m": distribute_tensor(torch.zeros(64, 256), mesh, [Shard(0)])}
        r = CkptStorageReader()
        dcp.load(tgt, checkpoint_id=extra_cid, storage_reader=r)
        assert torch.equal(tgt["m"].full_tensor(), full)
        report["range_received"] = r.bytes_received
    with open(os.path.join(out_dir, f"load{world}-{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


class DyingWriter(CkptStorageWriter):
    """Rank 1 is SIGKILLed in the middle of streaming its part (after some of its
    chunks went out); rank 2 after streaming its whole part, before DCP's metadata
    exists."""

    def write_data(self, plan, planner):
        future = super().write_data(plan, planner)
        if self.rank == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return future


def dying_worker(rank, world, port, cid, out_dir):
    mesh = init(rank, world, port)
    if rank == 1:
        from ckpt import _tree
        real = _tree.data_source
        calls = [0]

        def data_source(data):
            calls[0] += 1
            if calls[0] == 5:  # batches of ~1 KiB: the first ones went out already
                with open(os.path.join(out_dir, "rank1-killed"), "w") as f:
                    f.write("mid-stream")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(data)

        _tree.data_source = data_source
    writer = DyingWriter(block_bytes=1024, batch_bytes=1024)
    dcp.save(sharded(full_state(1), mesh, 0), checkpoint_id=cid, storage_writer=writer)


def reports(out_dir, prefix):
    out = {}
    for f in sorted(os.listdir(out_dir)):
        if f.startswith(prefix):
            with open(os.path.join(out_dir, f)) as fh:
                out[f] = json.load(fh)
    return out


def state_bytes(state):
    return sum(t.numel() * t.element_size() for g in ("model", "optim") for t in state[g].values())


def test_dcp_save_4_ranks_load_4_2_1_and_dedup(server, tmp_path):
    client = ckpt.Client(server.address)
    name = "pytest-dcp/sharded"
    cid = f"ckpt://{server.address}/{name}"
    received0 = server.metric("ckpt_received_bytes_total", 'method="Save"')
    mp.spawn(save_worker, args=(4, free_port(), cid, str(tmp_path)), nprocs=4, join=True)
    saves = reports(tmp_path, "save")
    assert saves["save0.json"]["version1"] == 1 and saves["save0.json"]["version2"] == 2
    assert saves["save0.json"]["version3"] == 3
    versions = client.versions(name)
    assert [v.version for v in versions] == [1, 2, 3]
    assert all(v.world_size == 5 for v in versions)  # 4 ranks + the metadata part
    assert [v.step for v in versions] == [1, 2, 3]
    # Step 2 changed only fc1.weight (48x32 fp32): only its chunks went over the wire.
    changed = 48 * 32 * 4
    total = state_bytes(full_state(1))
    sent1 = sum(r["sent1"] for r in saves.values())
    sent2 = sum(r["sent2"] for r in saves.values())
    # Replicated values are written by one rank only; non-tensor values ("step",
    # "config") are DCP's own small torch.save byte items (~2 KB each).
    assert total <= sent1 <= total + 8192, (sent1, total)
    assert changed <= sent2 <= changed + 4096, sent2  # fc1.weight and the new "step"
    assert versions[1].new_bytes <= changed + 64 * 1024  # + the new metadata blob
    assert server.metric("ckpt_received_bytes_total", 'method="Save"') - received0 >= sent1 + sent2

    # A matrix saved by one process in 1 KiB row blocks (for the byte-range check).
    range_cid = f"ckpt://{server.address}/pytest-dcp/rows"
    m = torch.arange(64 * 256, dtype=torch.float32).reshape(64, 256)
    dcp.save({"m": m}, checkpoint_id=range_cid, storage_writer=CkptStorageWriter(block_bytes=1024),
             no_dist=True)

    for world, dim in ((4, 0), (2, 1)):
        mp.spawn(load_worker, args=(world, free_port(), f"{cid}@2", dim, 2, str(tmp_path),
                                    range_cid if world == 2 else ""), nprocs=world, join=True)
    loads = reports(tmp_path, "load2-")
    # Each of the 2 ranks fetched only its 32 rows of the 64-row matrix.
    assert [r["range_received"] for r in loads.values()] == [32 * 256 * 4] * 2
    loads4 = reports(tmp_path, "load4-")
    assert sum(r["received"] for r in loads4.values()) == state_bytes(full_state(2)) + \
        3 * (32 * 4 + 4)  # replicated tensors are read by every rank
    # Every rank received exactly the tensor bytes of its shards: with 4 ranks the
    # saved row shards, with 2 ranks column shards cut out of the saved row blocks
    # by the server (no whole rows or blocks); besides them only DCP's small byte
    # items ("step", "config").
    assert len(loads) == 2 and len(loads4) == 4
    for r in list(loads.values()) + list(loads4.values()):
        assert r["received"] == r["local"], r
        assert 0 < r["other"] < 8192, r

    # One process, plain tensors (no process group).
    expected = full_state(3)
    target = zeros_like_state(expected)
    reader = CkptStorageReader()
    dcp.load(target, checkpoint_id=cid, storage_reader=reader, no_dist=True)
    for group in ("model", "optim"):
        for k, v in expected[group].items():
            assert torch.equal(target[group][k], v), k
    assert target["step"] == 3
    assert reader.tensor_bytes_received == state_bytes(expected)
    # An explicit version and the metadata read without unpickling code.
    target = zeros_like_state(expected)
    dcp.load(target, checkpoint_id=f"{cid}@1", storage_reader=CkptStorageReader(), no_dist=True)
    assert torch.equal(target["model"]["fc1.weight"], full_state(1)["model"]["fc1.weight"])
    blob = client.load(name + "@1", keys=["__dcp_metadata__"])["__dcp_metadata__"]
    assert "model.fc1.weight" in decode_metadata(blob).state_dict_metadata


def test_rank_killed_mid_save_leaves_no_version(tmp_path):
    server = ServerProcess(["--part-timeout", "2"])
    try:
        client = ckpt.Client(server.address)
        name = "pytest-dcp/killed"
        cid = f"ckpt://{server.address}/{name}"
        with pytest.raises(Exception):
            mp.spawn(dying_worker, args=(4, free_port(), cid, str(tmp_path)), nprocs=4,
                     join=True)
        assert (tmp_path / "rank1-killed").read_text() == "mid-stream"
        with pytest.raises(ckpt.NotFound):
            client.versions(name)
        # The parts that were in expire (--part-timeout 2): gc reclaims their chunks.
        removed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            gc = client.gc()
            removed += gc.bytes_removed
            if removed > 0 and client.stats().active_uploads == 0:
                break
            time.sleep(0.5)
        assert removed > 0
        stats = client.stats()
        assert stats.versions == 0 and stats.active_uploads == 0 and stats.stored_bytes == 0
        assert client.gc().chunks_removed == 0
        with pytest.raises(ckpt.NotFound):
            client.versions(name)
    finally:
        server.close()


def test_writer_and_reader_pickle_without_connection(server):
    cid = f"ckpt://{server.address}/pytest-dcp/pickled"
    writer = CkptStorageWriter(cid, step=4)
    writer._endpoint.client()._connect()  # an open channel is not pickled
    clone = pickle.loads(pickle.dumps(writer))
    assert clone.checkpoint_id == cid and clone.step == 4
    state = {"w": torch.randn(8, 8), "n": 3}
    dcp.save(state, storage_writer=clone, no_dist=True)
    assert clone.result.version == 1
    reader = pickle.loads(pickle.dumps(CkptStorageReader(cid + "@1")))
    target = {"w": torch.zeros(8, 8), "n": 0}
    dcp.load(target, storage_reader=reader, no_dist=True)
    assert torch.equal(target["w"], state["w"]) and target["n"] == 3
    assert CkptStorageWriter.validate_checkpoint_id(cid)
    assert not CkptStorageReader.validate_checkpoint_id("/tmp/checkpoint")


def test_load_into_tensors_that_cannot_take_bytes_in_place(server, monkeypatch):
    """Targets whose memory does not hold their values in stored order (a
    transposed view) or in the stored dtype get each box through a staging
    buffer, made when its bytes arrive, copied in and freed when the box is
    complete; the others in place."""
    import weakref
    from ckpt import dcp as ckpt_dcp
    staging, done, alive = {}, [], []
    make, complete = ckpt_dcp._PlanSink._make, ckpt_dcp._PlanSink._complete

    # (keyed by sink and node: a read plan may take several loads)
    def tracked_make(self, node):
        view = make(self, node)
        staging[id(self), node] = weakref.ref(view)  # (what holds the buffer's memory)
        return view

    def tracked_complete(self, node):
        # Every box completed before this one has let go of its buffer.
        alive.extend(n for n in done if n in staging and staging[n]() is not None)
        complete(self, node)
        done.append((id(self), node))

    monkeypatch.setattr(ckpt_dcp._PlanSink, "_make", tracked_make)
    monkeypatch.setattr(ckpt_dcp._PlanSink, "_complete", tracked_complete)
    cid = f"ckpt://{server.address}/pytest-dcp/staged"
    state = {"w": torch.randn(6, 4), "h": torch.randn(5, 3), "b": torch.arange(7.0),
             "blob": b"abc", "n": 2}
    dcp.save(state, storage_writer=CkptStorageWriter(cid), no_dist=True)
    target = {"w": torch.zeros(4, 6).t(), "h": torch.zeros(5, 3, dtype=torch.float64),
              "b": torch.zeros(7), "blob": b"", "n": 0}
    dcp.load(target, storage_reader=CkptStorageReader(cid), no_dist=True)
    assert not target["w"].is_contiguous() and torch.equal(target["w"], state["w"])
    assert target["h"].dtype == torch.float64 and torch.equal(target["h"], state["h"].double())
    assert torch.equal(target["b"], state["b"])
    assert target["blob"] == b"abc" and target["n"] == 2
    assert len(staging) == 2 and alive == []


def test_dcp_async_save_in_a_background_process(server):
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
    cid = f"ckpt://{server.address}/pytest-dcp/async-process"
    port = free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        state = {"w": torch.randn(16, 16), "step": 5}
        future = dcp.async_save(state, checkpoint_id=cid, storage_writer=CkptStorageWriter(),
                                async_checkpointer_type=AsyncCheckpointerType.PROCESS)
        future.result(timeout=300)
    finally:
        dist.destroy_process_group()
    target = {"w": torch.zeros(16, 16), "step": 0}
    dcp.load(target, checkpoint_id=cid, storage_reader=CkptStorageReader(), no_dist=True)
    assert torch.equal(target["w"], state["w"]) and target["step"] == 5


def test_metadata_reader_refuses_other_globals():
    import pickle as p

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(p.UnpicklingError, match="refusing global"):
        decode_metadata(p.dumps(Evil()))


class Opaque:
    """A picklable object: DCP stores it as torch.save bytes."""

    def __init__(self, value):
        self.value = value


def test_reader_refuses_pickled_objects_unless_allowed(server):
    cid = f"ckpt://{server.address}/pytest-dcp/objects"
    dcp.save({"w": torch.ones(2), "obj": Opaque(3), "n": 4}, checkpoint_id=cid,
             storage_writer=CkptStorageWriter(), no_dist=True)
    target = {"w": torch.zeros(2), "obj": None, "n": 0}
    with pytest.raises(BaseException, match="allow_pickle"):  # DCP: CheckpointException
        dcp.load(target, checkpoint_id=cid, storage_reader=CkptStorageReader(), no_dist=True)
    target = {"w": torch.zeros(2), "obj": None, "n": 0}
    dcp.load(target, checkpoint_id=cid, storage_reader=CkptStorageReader(allow_pickle=True),
             no_dist=True)
    assert target["obj"].value == 3 and target["n"] == 4 and torch.equal(target["w"], torch.ones(2))
