"""The native load path (ckpt._core: the C++ client core bound into the package)
and the grpcio one read Load streams alike: the same values, and for a server
that breaks the protocol the same exception class and message (one
conformance test for the two implementations of the Load protocol). Plus what
binding a second gRPC runtime into the process must not break: grpcio beside
it, TLS beside grpcio's, forked children, closed clients, Ctrl-C."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, List, Optional

import grpc
import pytest
import torch

import ckpt
from ckpt import _load, _wire
from ckpt.v1 import checkpoint_pb2 as pb

PATHS = ["native", "grpcio"]


@pytest.fixture(params=PATHS)
def load_path(request, monkeypatch):
    """Runs the test once with each load path."""
    if request.param == "grpcio":
        monkeypatch.setattr(_load, "native", None)
    elif _switched_off():
        pytest.skip("the native load path is switched off in this run")
    elif _load.native is None:
        pytest.fail("the native load path is not built (cmake builds python/src/ckpt/_core*.so)")
    return request.param


def _switched_off() -> bool:
    return os.environ.get("CKPT_NATIVE") == "0" or os.environ.get("CKPT_PURE_PYTHON") == "1"


def test_the_native_path_is_built_and_used():
    """The build makes it and loads take it, unless switched off."""
    if _switched_off():
        assert _load.native is None
    else:
        assert _load.native is not None, "python/src/ckpt/_core*.so is missing or does not load"


# ---------------------------------------------------------------- a hostile server


STALL = object()  # in a FakeServer's replies: wait until the client goes away


class FakeServer:
    """A CheckpointService whose Load replies with given raw messages; an
    entry (code, details) ends the stream with that status, STALL stops
    replying. Calls after the first get ``then`` if given."""

    def __init__(self, replies: List[Any], then: Optional[List[Any]] = None) -> None:
        self.replies = replies
        self.then = then
        self.calls = 0
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
        handler = grpc.method_handlers_generic_handler(
            "ckpt.v1.CheckpointService",
            {"Load": grpc.unary_stream_rpc_method_handler(self._load),
             "Save": grpc.stream_stream_rpc_method_handler(self._save)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _load(self, request: bytes, context: grpc.ServicerContext):
        self.calls += 1
        replies = self.then if self.calls > 1 and self.then is not None else self.replies
        for reply in replies:
            if reply is STALL:
                gone = threading.Event()
                context.add_callback(gone.set)
                gone.wait(120)
                return
            if isinstance(reply, tuple):
                context.abort(*reply)
            yield reply

    def _save(self, requests, context: grpc.ServicerContext):
        """Takes the save's first message, then answers nothing."""
        next(requests, None)
        gone = threading.Event()
        context.add_callback(gone.set)
        gone.wait(120)
        return iter(())

    def close(self) -> None:
        self.server.stop(None)


def header(num_nodes: int, data_bytes: int) -> bytes:
    return pb.LoadResponse(header=pb.LoadHeader(
        version=pb.VersionInfo(name="fake/x", version=1), num_nodes=num_nodes,
        data_bytes=data_bytes)).SerializeToString()


def tensor_node(key: str, n: int, size: int = -1) -> pb.Node:
    return pb.Node(str_key=key, tensor=pb.TensorMeta(
        dtype=pb.DTYPE_FLOAT32, shape=[n], device="cpu",
        data=pb.DataRef(size=4 * n if size < 0 else size, chunk_size=1 << 22,
                        chunks=[b"\0" * 16])))


def nodes(*tensors: pb.Node) -> bytes:
    root = pb.Node(dict=pb.Container(size=len(tensors)))
    return pb.LoadResponse(nodes=pb.NodeBatch(nodes=[root, *tensors])).SerializeToString()


def data(*pieces) -> bytes:
    return pb.LoadResponse(data=pb.DataBatch(pieces=[
        pb.DataPiece(node=n, offset=o, data=d) for n, o, d in pieces])).SerializeToString()


A = torch.arange(2, dtype=torch.float32)
B = torch.arange(2, 4, dtype=torch.float32)
C = torch.arange(4, 6, dtype=torch.float32)
TREE = nodes(tensor_node("a", 2), tensor_node("b", 2), tensor_node("c", 2))


def a_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


GOOD = [header(4, 24), TREE,
        data((1, 0, a_bytes(A)), (2, 0, a_bytes(B)[:3])),
        data((2, 3, a_bytes(B)[3:]), (3, 0, a_bytes(C)))]

HOSTILE = {
    "no header": ([TREE], ckpt.Internal, "load stream without header"),
    "ends before the header": ([], ckpt.Unavailable, "load stream ended before the header"),
    "ends in the tree": ([header(4, 24)], ckpt.Unavailable, "load stream ended in the tree"),
    "data instead of nodes": ([header(4, 24), data((1, 0, b"x"))], ckpt.Internal,
                              "expected nodes in load stream"),
    "ends in the data": ([header(4, 24), TREE, data((1, 0, a_bytes(A)))], ckpt.Unavailable,
                         "load stream ended in the data"),
    "a header announcing less data than the tree holds":
        ([header(4, 8), TREE, data((1, 0, a_bytes(A)))], ckpt.Internal,
         "load header announces 8 data bytes, the tree holds 24"),
    "pieces out of order": ([header(4, 24), TREE,
                             data((1, 0, a_bytes(A)), (2, 0, a_bytes(B)), (1, 0, a_bytes(A)))],
                            ckpt.Internal, "load stream pieces out of order"),
    "a node left unfinished": ([header(4, 24), TREE, data((1, 0, b"abcd"), (2, 0, a_bytes(B)))],
                               ckpt.Internal, "load stream pieces out of order"),
    "a node's data skipped": ([header(4, 24), TREE, data((1, 0, a_bytes(A)), (3, 0, a_bytes(C)))],
                              ckpt.Internal, "load stream skipped a node's data"),
    "an unknown node": ([header(4, 24), TREE, data((1, 0, a_bytes(A)), (9, 0, b"x"))],
                        ckpt.Internal, "load stream pieces out of order"),
    "a gap": ([header(4, 24), TREE, data((1, 4, a_bytes(A)))], ckpt.Internal,
              "load stream piece out of range"),
    "bytes past a node": ([header(4, 24), TREE, data((1, 0, a_bytes(A) + b"xxxx"))],
                          ckpt.Internal, "load stream piece out of range"),
    "not a data message": ([header(4, 24), TREE, TREE], ckpt.Internal,
                           "expected data in load stream"),
    "a status in the data": ([header(4, 24), TREE, data((1, 0, a_bytes(A))),
                              (grpc.StatusCode.DATA_LOSS, "chunk 3 of 'b' is damaged")],
                             ckpt.DataLoss, "chunk 3 of 'b' is damaged"),
    "a status first": ([(grpc.StatusCode.NOT_FOUND, "no version 7 of 'fake/x'")],
                       ckpt.NotFound, "no version 7 of 'fake/x'"),
}


def test_a_stream_in_pieces_loads_alike(load_path):
    fake = FakeServer(GOOD)
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            value = client.load("fake/x")
            # (the load took the path under test)
            assert (client._native is not None) == (load_path == "native")
            assert list(value) == ["a", "b", "c"]
            assert value["a"].equal(A) and value["b"].equal(B) and value["c"].equal(C)
            module = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
            client.load_state_dict(module, "fake/x")
            assert module["a"].equal(A) and module["b"].equal(B) and module["c"].equal(C)
    finally:
        fake.close()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_stream_is_refused_alike(load_path, case):
    replies, error, message = HOSTILE[case]
    fake = FakeServer(replies)
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            with pytest.raises(error) as raised:
                client.load("fake/x")
            assert raised.value.details == message
            module = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
            with pytest.raises(error) as raised:
                client.load_state_dict(module, "fake/x")
            assert raised.value.details == message
    finally:
        fake.close()


def test_a_tree_whose_size_disagrees_with_its_shape_is_refused(load_path):
    """Both refuse it before any byte is copied, in their own words: the
    core checks the tree as the server checks a saved one (InvalidArgument),
    the grpcio path when it places the tensor (Internal)."""
    # 'b' claims 4 bytes of data for two float32 elements.
    replies = [header(3, 12), nodes(tensor_node("a", 2), tensor_node("b", 2, size=4)),
               data((1, 0, a_bytes(A)), (2, 0, b"abcd"))]
    fake = FakeServer(replies)
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            with pytest.raises(ckpt.Error) as raised:
                client.load("fake/x")
            assert isinstance(raised.value, (ckpt.InvalidArgument, ckpt.Internal))
            assert re.search(r"tensor 'b': .*(8 bytes but the data declares 4|holds 4 bytes of "
                             r"data, its shape and dtype make 8)", raised.value.details), \
                raised.value.details
    finally:
        fake.close()


# ---------------------------------------------------------------- living beside grpcio


def test_only_its_init_function_is_exported():
    """Its gRPC, protobuf and absl stay private (grpcio bundles its own)."""
    if _load.native is None or shutil.which("nm") is None:
        pytest.skip("no native load path or no nm")
    out = subprocess.run(["nm", "-D", "--defined-only", _load.native.__file__],
                         capture_output=True, text=True, check=True).stdout
    exported = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert exported == ["PyInit__core"], exported


def test_grpcio_calls_run_beside_native_loads(client, name):
    """Saves (grpcio) and listings (grpcio) in threads while loads run
    natively, in one process, on one client."""
    torch.manual_seed(1)
    state = {f"w{i}": torch.randn(256, 1024) for i in range(8)}  # 8 MiB
    client.save(state, name)
    errors: List[BaseException] = []

    def loads():
        try:
            for _ in range(5):
                loaded = client.load(name)
                assert all(loaded[k].equal(v) for k, v in state.items())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def grpcio_calls():
        try:
            for i in range(5):
                assert client.save({"i": torch.tensor(i)}, name + "-side").version == i + 1
                assert [v.version for v in client.versions(name)] == [1]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=loads), threading.Thread(target=loads),
               threading.Thread(target=grpcio_calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _in_forked_child(client: ckpt.Client, queue) -> None:
    try:
        # The parent's gRPC runtime is not this process's to use or to
        # close: loads here would go through grpcio, and closing the
        # inherited client must leave the parent's connection alone.
        queue.put(_load.native_in_this_process() is None)
        client.close()
        del client
        import gc
        gc.collect()
    except BaseException as e:  # noqa: BLE001
        queue.put(repr(e))


def test_a_forked_child_leaves_the_parents_connection_alone(client, name):
    import multiprocessing
    client.save({"x": torch.arange(4)}, name)
    assert client.load(name)["x"].tolist() == [0, 1, 2, 3]  # the parent's core is in use
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_forked_child, args=(client, queue))
    child.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    for _ in range(3):
        assert client.load(name, timeout=30)["x"].tolist() == [0, 1, 2, 3]


def test_a_pickled_client_loads_in_another_process(client, name):
    import multiprocessing
    client.save({"x": torch.arange(3)}, name)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_load_pickled, (client, name)) == [0, 1, 2]


def _load_pickled(client: ckpt.Client, name: str) -> List[int]:
    return client.load(name)["x"].tolist()


def test_a_closed_client_reopens(client, name):
    client.save({"x": torch.ones(3)}, name)
    client.close()
    assert client.load(name)["x"].equal(torch.ones(3))


@contextlib.contextmanager
def interrupted_at_once():
    """SIGINT half a second in: the block must raise KeyboardInterrupt within
    10 s (its call's own deadline is 60 s)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10


def test_ctrl_c_stops_a_load_that_waits_for_the_server(load_path):
    """SIGINT while the server sends nothing raises KeyboardInterrupt at once
    (not when the deadline passes), cancels the call, and the client loads
    again afterwards."""
    fake = FakeServer([header(4, 24), TREE, STALL], then=GOOD)
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            with interrupted_at_once():
                client.load("fake/x", timeout=60)
            assert client.load("fake/x", timeout=60)["c"].equal(C)
    finally:
        fake.close()


def test_no_time_left_is_deadline_exceeded(load_path, client, name):
    client.save({"x": torch.ones(2)}, name)
    for timeout in (0, -1.5):
        with pytest.raises(ckpt.DeadlineExceeded):
            client.load(name, timeout=timeout)
        with pytest.raises(ckpt.DeadlineExceeded):
            client.save({"x": torch.zeros(2)}, name, timeout=timeout)
    assert client.load(name, timeout=30)["x"].equal(torch.ones(2))
    assert [v.version for v in client.versions(name)] == [1]


class _Staging(_load._Sink):
    """Stages every tensor in a buffer it makes, like _InPlaceSink does for
    tensors it cannot fill in place, and frees each as it completes."""

    def __init__(self) -> None:
        self.targets: List[Any] = []
        self.values: dict = {}

    def on_tree(self, version, nodes, facts) -> None:
        self.nodes = nodes
        self.targets = [True if f[0] == _wire.NODE_TENSOR else None for f in facts]

    def scatter_targets(self):
        return self.targets, lambda i: memoryview(bytearray(self.nodes[i].tensor.data.size)), \
            self._done

    def _done(self, i: int) -> None:
        view = self.targets[i]
        self.values[i] = bytes(view)
        view.release()  # BufferError if the load still held it
        self.targets[i] = None


def test_a_staging_buffer_is_let_go_when_its_tensor_is_complete(load_path):
    """(Otherwise a load into a GPU model would hold every staged tensor in
    host memory until the end.)"""
    fake = FakeServer(GOOD)
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            sink = _Staging()
            client._load_stream("fake/x", sink)
            assert sink.values == {1: a_bytes(A), 2: a_bytes(B), 3: a_bytes(C)}
    finally:
        fake.close()


def test_ctrl_c_stops_a_save_that_waits_for_the_server(load_path):
    fake = FakeServer([])
    try:
        with ckpt.Client(f"127.0.0.1:{fake.port}") as client:
            with interrupted_at_once():
                client.save({"x": torch.ones(4)}, "fake/x", timeout=60)
    finally:
        fake.close()


def test_saves_of_host_tensors_take_the_native_path(client, name, monkeypatch):
    """Tensors in host memory (and save_async's snapshots) go through the
    core; a tensor that does not hold its values in host memory order (here
    a transposed view) sends the save through grpcio, which reads it chunk by
    chunk. Both store the same values."""
    if _switched_off():
        pytest.skip("the native path is switched off in this run")
    started = []
    grpcio_save = client._start_save
    monkeypatch.setattr(client, "_start_save",
                        lambda *a, **k: started.append(a[0]) or grpcio_save(*a, **k))
    plain = {"w": torch.randn(300, 200), "b": torch.arange(7), "meta": {"step": 3},
             "blob": b"\x00\x01"}
    assert client.save(plain, name).version == 1
    client.save_async(plain, name).result()
    assert started == []
    strided = dict(plain, w=plain["w"].t())
    assert client.save(strided, name).version == 3
    assert started == [name]
    for version, expected in ((1, plain), (2, plain), (3, strided)):
        loaded = client.load(name, version=version)
        assert loaded["w"].equal(expected["w"]) and loaded["b"].equal(expected["b"])
        assert loaded["meta"] == {"step": 3} and loaded["blob"] == b"\x00\x01"
