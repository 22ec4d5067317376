"""A fast, conservative mirror of the schema's mount definition, so that common valid mounts skip jsonschema."""

from __future__ import annotations

import re

from mountplan.loader._control import CONTROL_CHARACTER

__all__ = ["FS_TYPE_RE", "is_surely_valid_mount"]

_ATTRS = frozenset(
    {"ro", "nosuid", "nodev", "noexec", "noatime", "relatime", "strictatime", "nodiratime", "nosymfollow"}
)
_PROPAGATIONS = frozenset({"private", "slave", "shared", "unbindable"})
_MOUNT_KEYS = frozenset(
    {
        "name",
        "root",
        "target",
        "type",
        "source",
        "options",
        "bind",
        "attrs",
        "inherit_attrs",
        "propagation",
        "mountpoint",
        "after",
    }
)
FS_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_OPTION_KEY_RE = re.compile(r"^[^=,\s\x00-\x1f\x7f-\x9f]+\Z")
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")


def _is_ident(value: object, ident: re.Pattern[str]) -> bool:
    return type(value) is str and ident.search(value) is not None


def _is_string_list(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def is_surely_valid_mount(mount: object, ident: re.Pattern[str], target_re: re.Pattern[str]) -> bool:
    """A fast, conservative mirror of the schema's mount definition.

    True only when the schema would accept the mount; anything unusual returns
    False and goes through jsonschema. tests/loader/test_schema.py checks the
    implication on generated mounts.
    """
    if type(mount) is not dict or not mount.keys() <= _MOUNT_KEYS:
        return False
    target = mount.get("target")
    if not _is_ident(mount.get("name"), ident) or type(target) is not str or not target:
        return False
    if target_re.search(target) is None:
        return False
    if ("type" in mount) == ("bind" in mount):
        return False
    fs_type = mount.get("type")
    bind = mount.get("bind")
    if "type" in mount:
        if type(fs_type) is not str or FS_TYPE_RE.search(fs_type) is None:
            return False
    elif "options" in mount or "source" in mount or not _is_surely_valid_bind(bind, ident):
        return False
    if "root" in mount and not _is_ident(mount["root"], ident):
        return False
    if "source" in mount and not _is_clean_string(mount["source"]):
        return False
    if "options" in mount and not _is_surely_valid_options(mount["options"]):
        return False
    attrs = mount.get("attrs", [])
    if not _is_string_list(attrs) or not set(attrs) <= _ATTRS or len(set(attrs)) != len(attrs):
        return False
    if type(mount.get("inherit_attrs", True)) is not bool:
        return False
    if mount.get("propagation", "private") not in _PROPAGATIONS:
        return False
    after = mount.get("after", [])
    if not _is_string_list(after) or len(set(after)) != len(after):
        return False
    return "mountpoint" not in mount or _is_surely_valid_mountpoint(mount["mountpoint"])


def _is_surely_valid_bind(bind: object, ident: re.Pattern[str]) -> bool:
    if type(bind) is not dict or not bind.keys() <= {"path", "root", "recursive"}:
        return False
    if not _is_clean_string(bind.get("path")):
        return False
    if "root" in bind and not _is_ident(bind["root"], ident):
        return False
    return type(bind.get("recursive", True)) is bool


def _is_surely_valid_options(options: object) -> bool:
    if type(options) is not dict:
        return False
    for key, value in options.items():
        if _OPTION_KEY_RE.search(key) is None:
            return False
        if type(value) is list:
            if not value or not all(
                type(item) is int or (type(item) is str and CONTROL_CHARACTER.search(item) is None) for item in value
            ):
                return False
        elif type(value) is str:
            if CONTROL_CHARACTER.search(value) is not None:
                return False
        elif type(value) not in (int, bool):
            return False
    return True


def _is_clean_string(value: object) -> bool:
    """A non-empty string without control characters (the schema's rule for kernel-bound strings)."""
    return type(value) is str and bool(value) and CONTROL_CHARACTER.search(value) is None


def _is_surely_valid_mountpoint(mountpoint: object) -> bool:
    if type(mountpoint) is not dict or not mountpoint.keys() <= {"create", "kind", "mode"}:
        return False
    if type(mountpoint.get("create", True)) is not bool:
        return False
    if mountpoint.get("kind", "file") not in ("directory", "file"):
        return False
    mode = mountpoint.get("mode", "0755")
    return type(mode) is str and _MODE_RE.search(mode) is not None
