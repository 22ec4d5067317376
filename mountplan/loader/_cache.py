"""A cache of validated plans, keyed by the plan file's bytes, so a repeated load skips YAML and JSON Schema.

A build worker loads the same plan file for every action; parsing it and running
the schema and semantic checks (and importing PyYAML and jsonschema to do so)
costs more than the mounts. After a successful load the built :class:`Plan` is
written as JSON under a key that covers everything the result depends on: the
file's bytes and name, ``strict_kernel``, the running kernel (release, registered
filesystems, emulated profile), and the
size and mtime of the loader's own source and schema (so an upgraded or edited
mountplan never trusts an entry written by another version).

The cache is a convenience, never an authority: an entry that is missing,
unreadable, not owned by us, writable by others, or that does not decode to
exactly a Plan is ignored and the file is validated again. A plan still has to
be loaded through the full checks once per key. The directory is private to the
user (``/run/mountplan-plans`` for root, ``$XDG_RUNTIME_DIR/mountplan-plans``
otherwise, or ``$MOUNTPLAN_PLAN_CACHE``; ``MOUNTPLAN_PLAN_CACHE=off`` disables
it), because whoever can write an entry decides which mounts a plan means.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import stat
from typing import Any

from mountplan import model
from mountplan.model import Plan

__all__ = ["ENV_VAR", "cache_dir", "lookup", "store"]

#: Environment variable naming the cache directory; ``off`` turns the cache off.
ENV_VAR = "MOUNTPLAN_PLAN_CACHE"
_FORMAT = 1
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a cached plan depends on besides the file: the code that validates and builds it.
_DEPENDS_ON = ("loader", "model.py", "_fsopts.py", "schema/mountplan.schema.json", "__init__.py")


def cache_dir() -> str | None:
    """The directory this process uses, or None when caching is off or has no private place."""
    configured = os.environ.get(ENV_VAR)
    if configured is not None:
        return None if configured in ("", "off") else configured
    if os.geteuid() == 0:
        return "/run/mountplan-plans"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "mountplan-plans") if runtime else None


def _code_stamp() -> list[list[int | str]]:
    stamp: list[list[int | str]] = []
    for rel in _DEPENDS_ON:
        path = os.path.join(_PACKAGE, rel)
        names = sorted(n for n in os.listdir(path) if n.endswith(".py")) if os.path.isdir(path) else [""]
        for name in names:
            st = os.stat(os.path.join(path, name) if name else path)
            stamp.append([f"{rel}/{name}", st.st_size, st.st_mtime_ns])
    return stamp


def _kernel_stamp() -> list[str]:
    # strict_kernel checks filesystem types against what the kernel has registered,
    # and an emulated kernel profile changes what the checks accept.
    try:
        with open("/proc/filesystems", "rb") as f:
            filesystems = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        filesystems = ""
    return [os.uname().release, filesystems, os.environ.get("MOUNTPLAN_KERNEL_PROFILE", "")]


def _key(data: bytes, filename: str, strict_kernel: bool) -> str:
    material = json.dumps(
        [_FORMAT, filename, strict_kernel, _kernel_stamp(), _code_stamp(), hashlib.sha256(data).hexdigest()]
    )
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


# ---------------------------------------------------------------- Plan <-> JSON
# Only the model's own dataclasses and enums are ever built from an entry.
_CLASSES: dict[str, type] = {
    name: obj
    for name, obj in vars(model).items()
    if isinstance(obj, type) and obj.__module__ == model.__name__ and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum))
}


def _encode(value: object) -> Any:
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return {"$enum": type(value).__name__, "value": _encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"$class": type(value).__name__, "fields": fields}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {"$frozenset": sorted((_encode(v) for v in value), key=json.dumps)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    raise TypeError(f"cannot cache a {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tuple" in value:
        return tuple(_decode(v) for v in value["$tuple"])
    if "$frozenset" in value:
        return frozenset(_decode(v) for v in value["$frozenset"])
    cls = _CLASSES[value.get("$enum") or value["$class"]]
    if "$enum" in value:
        return cls(_decode(value["value"]))
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return cls(**{k: _decode(v) for k, v in value["fields"].items()})


# ---------------------------------------------------------------- the files


def _private_dir_fd(path: str, create: bool) -> int | None:
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None
    return fd


def lookup(data: bytes, filename: str, strict_kernel: bool) -> tuple[str, Plan | None]:
    """The cache key for this load, and the plan cached under it (None on a miss)."""
    key = _key(data, filename, strict_kernel)
    directory = cache_dir()
    dirfd = _private_dir_fd(directory, create=False) if directory else None
    if dirfd is None:
        return key, None
    try:
        fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
    except OSError:
        return key, None
    finally:
        os.close(dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return key, None
        with os.fdopen(fd, "rb", closefd=False) as f:
            doc = json.loads(f.read())
        if doc.get("key") != key:
            return key, None
        plan = _decode(doc["plan"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return key, None
    finally:
        os.close(fd)
    return key, plan if isinstance(plan, Plan) else None


def store(key: str, plan: Plan) -> None:
    """Write ``plan`` under ``key``; any failure just leaves the cache as it was."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        encoded = _encode(plan)
    except TypeError:
        return
    if _decode(encoded) != plan:  # a field the encoding does not carry faithfully: do not cache
        return
    dirfd = _private_dir_fd(directory, create=True)
    if dirfd is None:
        return
    tmp = f".{key}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps({"key": key, "plan": encoded}, sort_keys=True).encode("ascii"))
        # No fsync: losing an entry in a crash only means validating once more.
        os.replace(tmp, f"{key}.json", src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
    finally:
        os.close(dirfd)
