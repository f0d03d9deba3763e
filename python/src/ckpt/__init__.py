"""ckpt: torch.save / torch.load / load_state_dict against a ckpt server.

    import ckpt
    ckpt.save(model.state_dict(), "team/run-1/model")          # like torch.save
    state = ckpt.load("team/run-1/model", map_location="cpu")  # like torch.load
    ckpt.load_state_dict(model, "team/run-1/model")             # in place, no second copy

The module-level functions use a default :class:`Client` made from the
environment (``CKPT_SERVER``, ``CKPT_TOKEN``, ...); make your own with
``ckpt.Client("host:50051", token=...)``. ``ckpt.dcp`` holds the
torch.distributed.checkpoint storage backend.
"""

from __future__ import annotations

from typing import Any

from ckpt.client import (CheckpointSummary, Client, GcResult, Manifest, ManifestEntry, Part,
                         RetentionPolicy, SaveResult, ServerInfo, TensorStats, VersionInfo,
                         default_client, escape_glob, set_default_client)
from ckpt.errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, Error,
                         FailedPrecondition, Internal, InvalidArgument, NotFound, OutOfRange,
                         PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable,
                         Unimplemented, Unknown)

__version__ = "0.1.0"

__all__ = [
    "Client", "SaveResult", "VersionInfo", "CheckpointSummary", "Manifest", "ManifestEntry",
    "TensorStats",
    "RetentionPolicy", "GcResult", "ServerInfo", "Part", "default_client", "set_default_client",
    "escape_glob", "save", "save_async", "load", "load_state_dict", "ls", "versions", "show",
    "tag", "untag", "delete", "retention", "prune", "gc", "stats",
    "Error", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]


def save(obj: Any, name: str, **kwargs: Any) -> SaveResult:
    """:meth:`Client.save` on the default client."""
    return default_client().save(obj, name, **kwargs)


def save_async(obj: Any, name: str, **kwargs: Any):
    """:meth:`Client.save_async` on the default client."""
    return default_client().save_async(obj, name, **kwargs)


def load(name: str, *args: Any, **kwargs: Any) -> Any:
    """:meth:`Client.load` on the default client."""
    return default_client().load(name, *args, **kwargs)


def load_state_dict(module: Any, name: str, *args: Any, **kwargs: Any):
    """:meth:`Client.load_state_dict` on the default client."""
    return default_client().load_state_dict(module, name, *args, **kwargs)


def ls(prefix: str = ""):
    """:meth:`Client.ls` on the default client."""
    return default_client().ls(prefix)


def versions(name: str):
    """:meth:`Client.versions` on the default client."""
    return default_client().versions(name)


def show(name: str, *args: Any, **kwargs: Any):
    """:meth:`Client.show` on the default client."""
    return default_client().show(name, *args, **kwargs)


def tag(name: str, tag: str, version: int = 0) -> int:
    """:meth:`Client.tag` on the default client."""
    return default_client().tag(name, tag, version)


def untag(name: str, tag: str) -> None:
    """:meth:`Client.untag` on the default client."""
    default_client().untag(name, tag)


def delete(name: str, version: int = 0, *, force: bool = False) -> int:
    """:meth:`Client.delete` on the default client."""
    return default_client().delete(name, version, force=force)


def retention(name: str, policy: Any = None, *, clear: bool = False):
    """:meth:`Client.retention` on the default client."""
    return default_client().retention(name, policy, clear=clear)


def prune(name: str, *, dry_run: bool = False):
    """:meth:`Client.prune` on the default client."""
    return default_client().prune(name, dry_run=dry_run)


def gc():
    """:meth:`Client.gc` on the default client."""
    return default_client().gc()


def stats():
    """:meth:`Client.stats` on the default client."""
    return default_client().stats()
