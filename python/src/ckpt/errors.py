"""Exceptions raised by the ckpt client: one class per gRPC status code."""

from __future__ import annotations

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


def from_rpc_error(error: grpc.RpcError, target: str = "") -> Error:
    """Converts a :class:`grpc.RpcError` raised by grpcio."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return from_status(code, details, target)


def from_status(code: Union[grpc.StatusCode, int], details: str, target: str = "") -> Error:
    """The error for a failed call's status (a code or its number), naming
    ``target`` when the server could not be reached."""
    if not isinstance(code, grpc.StatusCode):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.UNAVAILABLE and target:
        details = (f"{details} (is ckpt-server running at {target}? set the address with "
                   "ckpt.Client(target) or the CKPT_SERVER environment variable)")
    return error_for(code, details)
