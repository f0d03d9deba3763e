"""The ckpt client: ``torch.save`` / ``torch.load`` / ``load_state_dict`` against a
ckpt server, and the listing, tagging, retention and garbage-collection calls.

A gRPC client (grpcio): control messages are protobuf, tensor bytes travel in
hand-built frames (see ``_wire``), chunk digests are XXH3-128 computed on the
tensors' own memory. Every byte moves in C (grpcio, xxHash, memcpy; the
per-tensor loops in the optional ``_speedups`` extension), with the GIL
released while it waits for the network and while it hashes or copies large
amounts.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import datetime
import os
import threading
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import torch

from ckpt import _tree, _wire
from ckpt import _load
from ckpt._load import (_InPlaceSink, _Sink, _ValueSink, _run_load, _run_native_load,
                        _tune_malloc)
from ckpt._results import (CheckpointSummary, GcResult, Manifest, ManifestEntry,
                           RetentionPolicy, SaveResult, ServerInfo, TensorStats,
                           VersionInfo)
from ckpt._save import Part, _SaveCall
from ckpt.errors import DeadlineExceeded, NotFound, from_rpc_error, from_status
from ckpt.v1 import checkpoint_pb2 as pb
from ckpt.v1 import checkpoint_pb2_grpc as pb_grpc

_SERVICE = "/ckpt.v1.CheckpointService/"
# Response messages are <= 4 MiB by protocol; leave headroom.
_MAX_RECEIVE = (4 << 20) + (256 << 10)

# Clients with an open channel: closed at interpreter exit, before Python
# tears down the modules grpc's callbacks still use (a process that exits
# without close() then ends quietly).
_OPEN: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_OPEN):
        try:
            client.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
DEFAULT_SERVER = "localhost:50051"

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------- helpers


def escape_glob(text: str) -> str:
    """Escapes glob metacharacters so that ``text`` matches only itself."""
    return "".join("\\" + c if c in "*?[\\" else c for c in text)


def _check_name(name: Any, hint: str = "") -> None:
    if not isinstance(name, str):
        raise TypeError(f"a checkpoint name is a str, not {type(name).__name__}{hint}")


def _check_deadline(timeout: Optional[float]) -> None:
    """A deadline already past raises at once (grpcio would race the server
    for it, and the native path would start the call)."""
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded("Deadline Exceeded")


def _parse_ref(name: str, version: int, tag: str) -> Tuple[str, int, str]:
    """NAME@VERSION / NAME@TAG (like the CLI) unless version or tag is given."""
    _check_name(name)
    if "@" in name and not version and not tag:
        name, sel = name.split("@", 1)
        if sel.isdigit() and int(sel) > 0:
            return name, int(sel), ""
        return name, 0, sel
    return name, version or 0, tag or ""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _read(path: PathLike, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {what} '{path}': {e.strerror}") from None


# ---------------------------------------------------------------- the client


class Client:
    """A connection to a ckpt server. Thread-safe; picklable (the channel is
    opened on first use, so a pickled client works in another process).

    Arguments left out come from the environment like the ``ckpt`` CLI:
    ``CKPT_SERVER`` (default ``localhost:50051``), ``CKPT_TOKEN``,
    ``CKPT_TOKEN_FILE``, ``CKPT_TLS``, ``CKPT_CA_CERT``, ``CKPT_CERT``,
    ``CKPT_KEY``, ``CKPT_TLS_SERVER_NAME``. Explicit arguments win over the
    environment; a token wins over a token file. ``ca_cert``, ``cert`` and
    ``tls_server_name`` imply ``tls``.

    Args:
        target: ``HOST:PORT`` of the server.
        token: bearer token sent with every call.
        token_file: file holding the token (whitespace stripped).
        tls: connect with TLS (server verified with ``ca_cert`` or the system roots).
        ca_cert: PEM file of the CAs that verify the server.
        cert, key: PEM client certificate and key (servers requiring mTLS).
        tls_server_name: name to verify the server certificate against.
        timeout: seconds for each unary call (saves and loads have none unless given).
        chunk_size: chunk size for saves (0: the server's).
        batch_bytes: data bytes hashed and announced per node batch.
    """

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None,
                 token_file: Optional[PathLike] = None, tls: Optional[bool] = None,
                 ca_cert: Optional[PathLike] = None, cert: Optional[PathLike] = None,
                 key: Optional[PathLike] = None, tls_server_name: Optional[str] = None,
                 timeout: float = 60.0, chunk_size: int = 0,
                 batch_bytes: int = 64 << 20) -> None:
        env = os.environ
        self.target = target or env.get("CKPT_SERVER") or DEFAULT_SERVER
        if token is None and token_file is None:
            token = env.get("CKPT_TOKEN") or None
            if token is None:
                token_file = env.get("CKPT_TOKEN_FILE") or None
        if token is None and token_file is not None:
            token = _read(token_file, "token file").decode("utf-8").strip()
        self._token = token or ""
        self._ca_cert = ca_cert if ca_cert is not None else env.get("CKPT_CA_CERT") or None
        self._cert = cert if cert is not None else env.get("CKPT_CERT") or None
        self._key = key if key is not None else env.get("CKPT_KEY") or None
        self._tls_server_name = (tls_server_name if tls_server_name is not None
                                 else env.get("CKPT_TLS_SERVER_NAME") or None)
        if tls is None:
            tls = _env_flag("CKPT_TLS")
        self._tls = bool(tls or self._ca_cert or self._cert or self._tls_server_name)
        if bool(self._cert) != bool(self._key):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        self._timeout = timeout
        self._chunk_size = chunk_size
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._channel: Optional[grpc.Channel] = None
        # The native path's connection (_load.native.Client; a forked child
        # neither uses nor closes its parent's: see _load.native_in_this_process).
        self._native: Any = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        # save_async's snapshot buffers, reused across saves.
        self._snapshots = _tree.SnapshotBuffers()
        # Lineage: "NAME@VERSION" of the last load/load_state_dict; a save
        # without parent= records it as the new version's parent.
        self._last_loaded = ""

    # -- connection

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_lock", "_channel", "_executor", "_stub", "_save_method", "_load_method",
                  "_snapshots", "_native"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._channel = None
        self._native = None
        self._executor = None
        self._snapshots = _tree.SnapshotBuffers()
        self._last_loaded = ""  # a copy starts its own lineage

    def __repr__(self) -> str:
        return f"ckpt.Client({self.target!r}{', tls=True' if self._tls else ''})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (waits for pending save_async calls first) and
        frees the snapshot buffers."""
        with self._lock:
            executor, self._executor = self._executor, None
            channel, self._channel = self._channel, None
            native, self._native = self._native, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._snapshots.release()
        if native is not None:  # (a no-op in a forked child)
            native.close()
        if channel is not None:
            channel.close()

    def release_snapshot_buffers(self) -> None:
        """Frees the host buffers :meth:`save_async` keeps for the next save
        (those of saves in flight go when they finish)."""
        self._snapshots.release()

    @property
    def snapshot_buffer_bytes(self) -> int:
        """Bytes of the snapshot buffers kept for the next :meth:`save_async`."""
        return self._snapshots.idle_bytes()

    def _connect(self) -> None:
        with self._lock:
            if self._channel is not None:
                return
            _OPEN.add(self)
            _tune_malloc()
            options = [("grpc.max_receive_message_length", _MAX_RECEIVE),
                       ("grpc.max_send_message_length", _wire.MAX_REQUEST_BYTES)]
            if self._tls:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(self._ca_cert, "CA certificate")
                    if self._ca_cert else None,
                    private_key=_read(self._key, "client key") if self._key else None,
                    certificate_chain=_read(self._cert, "client certificate")
                    if self._cert else None)
                if self._tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
                channel = grpc.secure_channel(self.target, creds, options=options)
            else:
                channel = grpc.insecure_channel(self.target, options=options)
            self._stub = pb_grpc.CheckpointServiceStub(channel)
            # The data path: requests and responses are raw bytes (see _wire).
            self._save_method = channel.stream_stream(_SERVICE + "Save")
            self._load_method = channel.unary_stream(_SERVICE + "Load")
            self._channel = channel

    @property
    def stub(self) -> pb_grpc.CheckpointServiceStub:
        """The generated gRPC stub on this client's channel (token not added)."""
        self._connect()
        return self._stub

    def _metadata(self) -> List[Tuple[str, str]]:
        return [("authorization", "Bearer " + self._token)] if self._token else []

    def _unary(self, method: str, request: Any) -> Any:
        self._connect()
        try:
            return getattr(self._stub, method)(request, metadata=self._metadata(),
                                               timeout=self._timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target, self._tls) from None

    # -- save

    def save(self, obj: Any, name: str, *, tags: Sequence[str] = (), step: int = 0,
             epoch: int = 0, metadata: Optional[Dict[str, Any]] = None,
             timeout: Optional[float] = None, rank: int = 0, world_size: int = 1,
             save_id: str = "", tensor_stats: bool = False,
             reject_nonfinite: bool = False, parent: Optional[str] = None) -> SaveResult:
        """``torch.save(obj, ...)`` as the next version of ``name``.

        ``obj`` is anything ``torch.save`` takes in the PyTorch tutorial: tensors of
        every dtype, ``nn.Parameter``, dict/OrderedDict (str or int keys), list,
        tuple, int, float, bool, str, None, bytes, nested freely. Only the chunks
        the server lacks are sent. Returns once the version is durable.

        Raises:
            TypeError: a value ckpt cannot store (an object, a lambda); names its key
                path. Nothing is sent.
            ckpt.Error: the server refused (InvalidArgument for a bad name,
                PermissionDenied, ResourceExhausted for a quota, ...).

        Several ranks can save parts of one version (like the C++ client's
        SaveOptions): each passes its ``rank``, the ``world_size`` and a ``save_id``
        all share, with a dict as ``obj`` (the version is the union of the dicts);
        each call returns once every part is in and the version committed.

        ``tensor_stats=True`` stores each tensor's statistics with the version (min,
        max, mean, std, L2 norm, NaN/Inf counts: ``ckpt show --stats``), computed
        with torch on the tensor's device; ``reject_nonfinite=True`` (implies it)
        refuses the version with :class:`ckpt.FailedPrecondition` naming the tensors
        that hold NaN or infinities, and nothing is saved. A server may refuse them
        for a name prefix on its own (``ckpt-server --reject-nonfinite``): saves
        there need ``tensor_stats=True``.

        Lineage: ``parent="NAME@VERSION"`` records the version this one was trained
        from (``ckpt log``); by default the version this client last loaded
        (``load``/``load_state_dict``), as a resumed job would; ``parent=""`` for
        none.
        """
        _check_name(name, " (save(obj, name): the object comes first, as in torch.save)")
        flat = _tree.flatten(obj, snapshot=False)
        part = Part(rank, world_size, save_id) if world_size > 1 else None
        return self._save_flat(name, flat, step=step, epoch=epoch, metadata=metadata,
                               tags=tags, part=part, timeout=timeout,
                               tensor_stats=tensor_stats, reject_nonfinite=reject_nonfinite,
                               parent=self._last_loaded if parent is None else parent)

    def save_async(self, obj: Any, name: str, *, tags: Sequence[str] = (), step: int = 0,
                   epoch: int = 0, metadata: Optional[Dict[str, Any]] = None,
                   timeout: Optional[float] = None, tensor_stats: bool = False,
                   reject_nonfinite: bool = False, parent: Optional[str] = None
                   ) -> "concurrent.futures.Future[SaveResult]":
        """Like :meth:`save`, but returns once every tensor has been copied to host
        memory (the snapshot): the caller may change its tensors right away. The
        future gives the :class:`SaveResult` (or raises the save's error). Saves of
        one client run in the order they were started. The snapshot goes into one
        host buffer that the client keeps once the save is done and reuses for the
        next save_async that fits (a memcpy into memory already mapped); at most
        two are kept, :meth:`release_snapshot_buffers` or :meth:`close` frees
        them."""
        _check_name(name, " (save_async(obj, name): the object comes first, as in torch.save)")
        flat = _tree.flatten(obj, snapshot=True, buffers=self._snapshots)
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, "ckpt-save")
            executor = self._executor
        parent = self._last_loaded if parent is None else parent

        def upload() -> SaveResult:
            try:
                return self._save_flat(name, flat, step=step, epoch=epoch, metadata=metadata,
                                       tags=tags, timeout=timeout, tensor_stats=tensor_stats,
                                       reject_nonfinite=reject_nonfinite, parent=parent)
            finally:
                # The buffer serves the next snapshot; this one is done with.
                buffer, flat.snapshot, flat.entries = flat.snapshot, None, []
                self._snapshots.give(buffer)

        return executor.submit(upload)

    def _save_flat(self, name: str, flat: _tree.Flat, *, step: int = 0, epoch: int = 0,
                   metadata: Optional[Dict[str, Any]] = None, tags: Sequence[str] = (),
                   part: Optional[Part] = None, timeout: Optional[float] = None,
                   tensor_stats: bool = False, reject_nonfinite: bool = False,
                   parent: str = "") -> SaveResult:
        _check_deadline(timeout)
        if part is None:
            saved = self._native_save(name, flat, step, epoch, metadata, tags, timeout,
                                      tensor_stats, reject_nonfinite, parent)
            if saved is not None:
                return saved
        call = self._start_save(name, flat, step=step, epoch=epoch, metadata=metadata,
                                tags=tags, part=part, timeout=timeout,
                                tensor_stats=tensor_stats, reject_nonfinite=reject_nonfinite,
                                parent=parent)
        return call.result()

    def _native_save(self, name: str, flat: _tree.Flat, step: int, epoch: int,
                     metadata: Optional[Dict[str, Any]], tags: Sequence[str],
                     timeout: Optional[float], tensor_stats: bool, reject_nonfinite: bool,
                     parent: str) -> Optional[SaveResult]:
        """A single writer's save through the native path (the C++ client core
        hashes, frames and sends the bytes where they lie), when every tensor
        holds its values in host memory (a snapshot's do); None otherwise: the
        grpcio path reads the others chunk by chunk (GPU tensors through
        bounded staging)."""
        sources: List[Any] = []
        for e in flat.entries:
            data = e.data
            if e.kind == "tensor":
                if not e.size:
                    sources.append(None)
                elif data.__class__ is memoryview:
                    sources.append(data)
                elif _tree.holds_its_values(data):
                    sources.append((data.data_ptr(), e.size))
                else:
                    return None
            elif e.kind == "bytes":
                sources.append(data)
            else:
                sources.append(None)
        core = self._native_client()
        if core is None:
            return None
        try:
            version, bytes_sent, chunks_total, chunks_sent, pruned = core.save(
                name, flat.entries, sources, int(step), int(epoch),
                {str(k): str(v) for k, v in (metadata or {}).items()}, list(tags), timeout,
                # (rejecting non-finite values takes the statistics)
                tensor_stats or reject_nonfinite, reject_nonfinite, parent or "")
        except _load.native.StatusError as e:
            raise from_status(e.args[0], e.args[1], self.target, self._tls) from None
        info = VersionInfo.from_proto(pb.VersionInfo.FromString(version))
        return SaveResult(info.name, info.version, bytes_sent, info.new_bytes, info.data_bytes,
                          chunks_total, chunks_sent, pruned, info)

    def _start_save(self, name: str, flat: _tree.Flat, *, step: int = 0, epoch: int = 0,
                    metadata: Optional[Dict[str, Any]] = None, tags: Sequence[str] = (),
                    part: Optional[Part] = None, timeout: Optional[float] = None,
                    tensor_stats: bool = False, reject_nonfinite: bool = False,
                    parent: str = "") -> _SaveCall:
        """Sends a save up to its commit; ``.result()`` on the returned call waits
        for the version (multi-part saves: for every part)."""
        self._connect()
        call = _SaveCall(self, name, flat, step, epoch, metadata, list(tags), part, timeout,
                         tensor_stats, reject_nonfinite, parent)
        call.send()
        return call

    # -- load

    def _native_client(self) -> Any:
        """The native load path's connection (None without it): opened on
        first use in each process, with this client's target, token and TLS
        settings (checked by _connect first)."""
        native = _load.native_in_this_process()
        if native is None:
            return None
        self._connect()
        with self._lock:
            if self._native is None:
                def path(p: Optional[PathLike]) -> str:
                    return os.fspath(p) if p else ""
                try:
                    self._native = native.Client(
                        self.target, self._token, self._tls, path(self._ca_cert),
                        path(self._cert), path(self._key), self._tls_server_name or "",
                        # (0: a node per batch, as the grpcio path)
                        self._chunk_size, max(int(self._batch_bytes), 1))
                except native.StatusError as e:
                    raise from_status(e.args[0], e.args[1], self.target, self._tls) from None
            return self._native

    def _load_stream(self, name: str, sink: _Sink, version: int = 0, tag: str = "",
                     patterns: Sequence[str] = (), skip_data: bool = False,
                     timeout: Optional[float] = None,
                     slices: Sequence[pb.TensorSlice] = ()) -> VersionInfo:
        _check_deadline(timeout)
        native = self._native_client()
        if native is not None:
            try:
                return _run_native_load(native, name, sink, version, tag, patterns, skip_data,
                                        timeout, slices)
            except _load.native.StatusError as e:
                # A stream the core refused names no server problem to hint at.
                own = e.args[1].startswith("load stream ")
                raise from_status(e.args[0], e.args[1], "" if own else self.target,
                                  self._tls) from None
        self._connect()
        request = pb.LoadRequest(name=name, version=version, tag=tag, patterns=list(patterns),
                                 skip_data=skip_data, slices=list(slices))
        call = self._load_method(request.SerializeToString(), metadata=self._metadata(),
                                 timeout=timeout)
        try:
            return _run_load(call, sink, slices)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.target, self._tls) from None
        except BaseException:
            call.cancel()  # also ends a prefetching thread's iteration
            raise

    def load(self, name: str, version: int = 0, tag: str = "", *,
             map_location: _tree.MapLocation = None, keys: Sequence[str] = (),
             strip_prefix: str = "", timeout: Optional[float] = None) -> Any:
        """``torch.load``: the value saved as ``name`` (``version`` or ``tag``, default
        ``latest``; ``"name@3"`` and ``"name@best"`` work too).

        Returns what ``torch.load`` returns for the saved object: dicts (an
        ``OrderedDict`` for a dict of tensors such as a state_dict), lists,
        tuples, scalars, bytes, tensors with their dtypes and shapes, and
        ``nn.Parameter`` for tensors saved with ``requires_grad``. Never runs
        pickle code.

        Args:
            map_location: like torch.load: a device (``"cpu"``, ``torch.device``) for
                every tensor, a dict mapping saved device strings to devices
                (``{"cuda:1": "cuda:0"}``; others stay), or a callable
                ``(storage, location) -> storage or None``. Default: each tensor's
                saved device; if that device is missing here: ckpt.FailedPrecondition
                suggesting map_location.
            keys: glob patterns over flattened keys (``"model_state_dict/*"``,
                ``"*/fc.*"``; keys joined by ``/``, list indices as numbers). Only
                the selected tensors' bytes cross the wire; the result keeps the
                structure above them.
            strip_prefix: removed from the keys of state_dicts (the root dict or a
                dict right under it whose values are all tensors), e.g.
                DataParallel's ``"module."``.
        """
        name, version, tag = _parse_ref(name, version, tag)
        sink = _ValueSink(map_location)
        info = self._load_stream(name, sink, version, tag, keys, timeout=timeout)
        self._last_loaded = f"{info.name}@{info.version}"
        return sink.build(strip_prefix)

    def load_state_dict(self, module: Union[torch.nn.Module, Dict[str, torch.Tensor]],
                        name: str, version: int = 0,
                        tag: str = "", *, prefix: str = "", strict: bool = True,
                        strip_prefix: str = "", rename: Optional[Dict[str, str]] = None,
                        timeout: Optional[float] = None) -> Any:
        """``module.load_state_dict(torch.load(...), strict)`` without a second copy of
        the model: the stored tensors stream straight into the module's existing
        parameters and buffers. ``module`` may also be a dict of tensors (a
        state_dict), filled in place the same way.

        Args:
            prefix: where the state_dict is in the saved value: ``""`` when the
                version is the state_dict itself, ``"model_state_dict"`` inside the
                tutorial's training checkpoint (nested: ``"models/netA"``). Only
                those tensors' bytes are fetched.
            strict: like PyTorch: missing or unexpected keys raise
                ckpt.FailedPrecondition (a RuntimeError) with PyTorch's message
                ("Error(s) in loading state_dict for Net:\\n\\tMissing key(s) in
                state_dict: ..."), before any byte is copied.
            strip_prefix: removed from stored keys that start with it (DataParallel's
                ``"module."``); then ``rename`` maps whole keys.

        Returns:
            ``_IncompatibleKeys(missing_keys, unexpected_keys)`` like PyTorch.

        Raises:
            ckpt.InvalidArgument: a shape or dtype differs (names the key;
                nothing is copied), even with strict=False.
        """
        name, version, tag = _parse_ref(name, version, tag)
        if isinstance(module, torch.nn.Module):
            targets = module.state_dict(keep_vars=True)
        else:
            targets = module  # a state_dict's tensors, filled in place
        sink = _InPlaceSink(targets, prefix, strip_prefix, rename, strict,
                            module.__class__.__name__)
        patterns = [escape_glob(prefix)] if prefix else []
        with torch.no_grad():
            info = self._load_stream(name, sink, version, tag, patterns, timeout=timeout)
            self._last_loaded = f"{info.name}@{info.version}"
        from torch.nn.modules.module import _IncompatibleKeys
        return _IncompatibleKeys(sink.missing, sink.unexpected)

    # -- everything else

    def ls(self, prefix: str = "") -> List[CheckpointSummary]:
        """Checkpoint names starting with ``prefix`` (all pages)."""
        out: List[CheckpointSummary] = []
        request = pb.ListCheckpointsRequest(prefix=prefix)
        while True:
            response = self._unary("ListCheckpoints", request)
            for c in response.checkpoints:
                created = None
                if c.HasField("latest_create_time"):
                    created = datetime.datetime.fromtimestamp(
                        c.latest_create_time.seconds + c.latest_create_time.nanos / 1e9,
                        tz=datetime.timezone.utc)
                out.append(CheckpointSummary(c.name, c.latest_version, c.num_versions, created))
            if not response.next_page_token:
                return out
            request.page_token = response.next_page_token

    def versions(self, name: str) -> List[VersionInfo]:
        """Versions of ``name``, oldest first. ckpt.NotFound if none."""
        out: List[VersionInfo] = []
        request = pb.ListVersionsRequest(name=name)
        while True:
            response = self._unary("ListVersions", request)
            out.extend(VersionInfo.from_proto(v) for v in response.versions)
            if not getattr(response, "next_page_token", ""):
                return out
            request.page_token = response.next_page_token

    def show(self, name: str, version: int = 0, tag: str = "") -> Manifest:
        """A version's record and tree (keys, dtypes, shapes, sizes, devices,
        scalars) without its data, like ``ckpt show``."""
        name, version, tag = _parse_ref(name, version, tag)
        request = pb.GetManifestRequest(name=name, version=version, tag=tag)
        nodes: List[pb.Node] = []
        info = None
        while True:
            response = self._unary("GetManifest", request)
            info = VersionInfo.from_proto(response.version)
            nodes.extend(response.nodes)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        keys = _tree.flattened_keys(nodes)
        entries = []
        for key, node in zip(keys, nodes):
            which = node.WhichOneof("value")
            if which == "tensor":
                m = node.tensor
                entries.append(ManifestEntry(key, "tensor", _tree.FROM_PB.get(m.dtype),
                                             tuple(m.shape), m.device, m.requires_grad,
                                             m.data.size,
                                             stats=TensorStats.from_proto(m.stats)
                                             if m.HasField("stats") else None))
            elif which == "bytes":
                entries.append(ManifestEntry(key, "bytes", size=node.bytes.data.size))
            elif which in ("dict", "list", "tuple"):
                entries.append(ManifestEntry(key, which, size=getattr(node, which).size))
            elif which == "none":
                entries.append(ManifestEntry(key, "none"))
            else:
                kind = {"bool_value": "bool", "int_value": "int", "float_value": "float",
                        "string_value": "str"}[which]
                entries.append(ManifestEntry(key, kind, value=getattr(node, which)))
        return Manifest(info, entries)

    def tag(self, name: str, tag: str, version: int = 0) -> int:
        """Points ``tag`` at ``version`` (``"name@3"`` works; default latest); returns
        the version tagged."""
        name, version, sel = _parse_ref(name, version, "")
        if not version:
            version = self._resolve(name, sel)
        self._unary("SetTag", pb.SetTagRequest(name=name, tag=tag, version=version))
        return version

    def untag(self, name: str, tag: str) -> None:
        """Removes a user tag."""
        self._unary("DeleteTag", pb.DeleteTagRequest(name=name, tag=tag))

    def delete(self, name: str, version: int = 0, *, force: bool = False) -> int:
        """Deletes one version (``"name@3"`` or ``"name@tag"``); ``force`` also when user
        tags point at it. Returns the chunks released (freed by :meth:`gc`)."""
        name, version, sel = _parse_ref(name, version, "")
        if not version:
            if not sel:
                raise ValueError("delete needs a version: name@VERSION, name@TAG or version=")
            version = self._resolve(name, sel)
        response = self._unary("DeleteVersion",
                               pb.DeleteVersionRequest(name=name, version=version, force=force))
        return response.released_chunks

    def _resolve(self, name: str, tag: str) -> int:
        tag = tag or "latest"
        versions = self.versions(name)
        for v in versions:
            if tag in v.tags:
                return v.version
        if tag == "latest" and versions:
            return versions[-1].version
        raise NotFound(f"checkpoint {name} has no tag '{tag}'")

    def retention(self, name: str, policy: Optional[RetentionPolicy] = None, *,
                  clear: bool = False) -> Union[RetentionPolicy, List[int]]:
        """Without ``policy``: the name's retention policy. With one: sets it and
        returns the versions it would delete now (the next save or :meth:`prune`
        deletes them). ``clear=True`` removes the policy."""
        if policy is None and not clear:
            response = self._unary("GetRetention", pb.GetRetentionRequest(name=name))
            p = response.policy
            return RetentionPolicy(p.keep_last, p.keep_every_steps, p.keep_best, p.metric,
                                   p.higher_is_better)
        p = policy or RetentionPolicy()
        request = pb.SetRetentionRequest(name=name, policy=pb.RetentionPolicy(
            keep_last=p.keep_last, keep_every_steps=p.keep_every_steps, keep_best=p.keep_best,
            metric=p.metric, higher_is_better=p.higher_is_better))
        return list(self._unary("SetRetention", request).would_delete)

    def prune(self, name: str, *, dry_run: bool = False) -> List[int]:
        """Applies the name's retention policy now; the versions deleted."""
        return list(self._unary("Prune", pb.PruneRequest(name=name, dry_run=dry_run)).deleted)

    def gc(self) -> GcResult:
        """Removes chunks no committed version or upload in progress needs."""
        r = self._unary("GarbageCollect", pb.GarbageCollectRequest())
        return GcResult(r.chunks_removed, r.bytes_removed, r.orphan_uploads_removed)

    def stats(self) -> ServerInfo:
        """Server version, chunk size and store totals."""
        r = self._unary("GetServerInfo", pb.GetServerInfoRequest())
        s = r.stats
        return ServerInfo(r.server_version, r.chunk_size, r.max_message_bytes, s.checkpoints,
                          s.versions, s.chunks, s.stored_bytes, s.logical_bytes, s.dedup_ratio,
                          s.disk_bytes, s.active_uploads, getattr(s, "garbage_bytes", 0))


# ---------------------------------------------------------------- default client

_default: Optional[Client] = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client the module-level functions use: ``Client()`` from the
    environment, created on first use (or the one given to set_default_client)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def set_default_client(client: Optional[Client]) -> None:
    """Makes ``client`` the default (None: recreate from the environment)."""
    global _default
    with _default_lock:
        _default = client
