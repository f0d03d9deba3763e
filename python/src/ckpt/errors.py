"""Exceptions raised by the ckpt client: one class per gRPC status code."""

from __future__ import annotations

import socket
from typing import Dict, Optional, Type, Union

import grpc


class Error(RuntimeError):
    """A failed ckpt call. ``code`` is the :class:`grpc.StatusCode`, ``details`` the message.

    Subclasses name the code (:class:`NotFound`, :class:`PermissionDenied`, ...), so
    ``except ckpt.NotFound`` works; ``except ckpt.Error`` catches them all. It derives
    from ``RuntimeError`` like the errors ``torch.load``/``load_state_dict`` raise.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class Cancelled(Error):
    code = grpc.StatusCode.CANCELLED


class Unknown(Error):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(Error):
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(Error):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(Error):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(Error):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(Error):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(Error):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(Error):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(Error):
    code = grpc.StatusCode.ABORTED


class OutOfRange(Error):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(Error):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(Error):
    code = grpc.StatusCode.INTERNAL


class Unavailable(Error):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(Error):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(Error):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[Error]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def error_for(code: grpc.StatusCode, details: str) -> Error:
    """The :class:`Error` subclass instance for a gRPC status code."""
    return _BY_CODE.get(code, Error)(details, code)


_BY_NUMBER: Dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_rpc_error(error: grpc.RpcError, target: str = "", tls: bool = False) -> Error:
    """Converts a :class:`grpc.RpcError` raised by grpcio."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return from_status(code, details, target, tls)


def from_status(code: Union[grpc.StatusCode, int], details: str, target: str = "",
                tls: bool = False) -> Error:
    """The error for a failed call's status (a code or its number), with a hint
    about ``target`` (reached with ``tls`` or not) when the server could not be
    reached."""
    if not isinstance(code, grpc.StatusCode):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.UNAVAILABLE and target:
        details = f"{details}{_connect_hint(target, tls, details)}"
    return error_for(code, details)


# An HTTP/2 client preface and an empty SETTINGS frame: a plaintext gRPC
# server answers with its own SETTINGS frame, a TLS one with an alert (or by
# closing the connection).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"


# What grpcio and gRPC core say when no connection could be made (as opposed
# to a server that answered UNAVAILABLE itself, e.g. while shutting down).
_NO_CONNECTION = ("failed to connect", "connection refused", "socket closed", "handshake",
                  "connections to all backends failing", "unavailable: ipv")


def _probe_listener(target: str, timeout: float = 1.0) -> str:
    """What listens at ``target`` (host:port): "grpc" (plaintext gRPC), "tls",
    "nothing" (connection refused) or "unknown" (anything else: a timeout, an
    unreachable host, a name that does not resolve). One address, at most
    ``timeout`` to connect and as long to read."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return "unknown"
    host = host.strip("[]") or "localhost"
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except ConnectionRefusedError:
            return "nothing"
        sock.sendall(_PREFACE)
        answer = sock.recv(9)
    if len(answer) >= 4 and answer[3] == 0x04:
        return "grpc"  # an HTTP/2 SETTINGS frame
    if not answer or answer[0] in (0x15, 0x16):
        return "tls"  # a TLS alert or handshake record, or closed on the preface
    return "unknown"


def _connect_hint(target: str, tls: bool, details: str = "") -> str:
    """Why ``target`` may be unreachable: TLS on one side only is the usual
    cause when something does listen there (what the ``ckpt`` CLI says too).
    Probes only when no connection could be made."""
    found = "unknown"
    if any(s in details.lower() for s in _NO_CONNECTION):
        try:
            found = _probe_listener(target)
        except Exception:  # a timeout, a bad name or port: no hint beyond the generic one
            found = "unknown"
    if found == "grpc" and tls:
        return (" (the server there speaks plaintext gRPC, without TLS: drop tls=True, ca_cert, "
                "cert and CKPT_TLS/CKPT_CA_CERT/CKPT_CERT, or start the server with --tls-cert "
                "and --tls-key)")
    if found == "tls":
        if tls:
            return (" (the server there speaks TLS: check ca_cert, tls_server_name and, if it "
                    "requires client certificates, cert and key)")
        return (" (the server there answers with TLS, not plaintext gRPC: pass tls=True "
                "(CKPT_TLS=1) and ca_cert='CA.pem' if its certificate is not signed by the "
                "system's roots)")
    if found == "nothing":
        return (f" (nothing accepts connections at {target}: is ckpt-server running? set the "
                "address with ckpt.Client(target) or the CKPT_SERVER environment variable)")
    return (f" (is ckpt-server running at {target}? set the address with "
            "ckpt.Client(target) or the CKPT_SERVER environment variable)")
