"""jsonschema's errors translated into located, friendly diagnostics (one per problem, in the plan's words)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import ValidationError

from mountplan.loader._control import CONTROL_CHARACTER
from mountplan.loader._yaml import Document, Path, Position
from mountplan.loader.diagnostics import Diagnostic, Severity, did_you_mean

__all__ = ["Translator"]

_JSON_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


# types-jsonschema types instance/validator_value as "Any | Unset"; by the time a handler
# runs the keyword has fired, so both are set.
_Error = Any


def _kind_of(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _field(path: Path) -> str:
    """The last mapping key in ``path`` (the field a value belongs to)."""
    for part in reversed(path):
        if isinstance(part, str):
            return part
    return ""


class Translator:
    """Collects one located diagnostic per jsonschema error (see :meth:`translate`)."""

    def __init__(self, doc: Document, filename: str) -> None:
        self.doc = doc
        self.filename = filename
        self.diagnostics: list[Diagnostic] = []

    def at(self, pos: Position, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.filename, pos.line, pos.col, Severity.ERROR, message))

    def value_at(self, path: Path) -> Any:
        value: Any = self.doc.data
        for part in path:
            value = value[part]
        return value

    def mount_label(self, index: int) -> str:
        mount = self.doc.data["mounts"][index]
        name = mount.get("name") if isinstance(mount, dict) else None
        return f"mount {name!r}" if isinstance(name, str) else f"mount #{index + 1}"

    def describe(self, path: Path) -> str:
        """A phrase naming the value at ``path``: "'attrs' of mount 'tmp'", "option 'size' of …"."""
        if not path:
            return "the plan"
        if path[0] == "mounts" and len(path) >= 2 and isinstance(path[1], int):
            owner = self.mount_label(path[1])
            rest = path[2:]
            if not rest:
                return owner
            if rest[0] == "options" and len(rest) >= 2:
                return f"option {rest[1]!r} of {owner}"
            return f"{_dotted(rest)!r} of {owner}"
        if path[0] in ("objects", "devices") and len(path) >= 2 and isinstance(path[1], int):
            entry = self.doc.data[path[0]][path[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
            what = "object" if path[0] == "objects" else "device directory"
            owner = f"{what} {name!r}" if isinstance(name, str) else f"{what} #{path[1] + 1}"
            return f"{_dotted(path[2:])!r} of {owner}" if path[2:] else owner
        if path[0] == "roots" and len(path) >= 2:
            rest = path[2:]
            owner = f"root {path[1]!r}"
            return f"{_dotted(rest)!r} of {owner}" if rest else owner
        return repr(_dotted(path))

    def translate(self, error: ValidationError) -> None:
        path: Path = tuple(error.absolute_path)
        keyword = error.validator
        handler = getattr(self, f"on_{keyword}", None)
        if "propertyNames" in error.relative_schema_path:
            self.on_property_name(path, error)
        elif handler is not None:
            handler(path, error)
        else:
            self.at(self.doc.value_position(path), f"{self.describe(path)}: {error.message}")

    def on_property_name(self, path: Path, error: _Error) -> None:
        key = error.instance
        if CONTROL_CHARACTER.search(key):
            return  # the YAML layer reported it, at the key
        pos = self.doc.key_position((*path, key))
        if path == ("roots",):
            self.at(pos, f"invalid root name {key!r}: {_IDENT_RULE}")
        elif error.validator == "minLength":
            self.at(pos, f"empty key in {self.describe(path)}")
        else:
            self.at(pos, f"invalid option name {key!r} in {self.describe(path[:-1])}: no '=', ',' or spaces")

    def on_additionalProperties(self, path: Path, error: _Error) -> None:
        allowed = sorted(error.schema.get("properties", {}))
        where = self.describe(path)
        for key in sorted(
            set(error.instance) - set(allowed), key=lambda k: self.doc.key_position((*path, k)).line
        ):
            if key == "idmap" and len(path) == 2 and path[0] == "mounts":
                self.at(self.doc.key_position((*path, key)), _misplaced_idmap(where, error.instance))
                continue
            hint = did_you_mean(key, allowed)
            if not hint and allowed:
                hint = "; expected one of " + ", ".join(repr(name) for name in allowed)
            self.at(self.doc.key_position((*path, key)), f"unknown key {key!r} in {where}{hint}")

    def on_required(self, path: Path, error: _Error) -> None:
        for key in error.validator_value:
            if key not in error.instance:
                self.at(
                    self.doc.value_position(path), f"{self.describe(path)} is missing required key {key!r}"
                )

    def on_type(self, path: Path, error: _Error) -> None:
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        instance = error.instance
        pos = self.doc.value_position(path)
        field = _field(path)
        if len(path) >= 4 and path[2] == "options":
            if instance is None:
                self.at(pos, f"{self.describe(path[:4])} has no value; write 'true' for a flag")
            else:
                self.at(pos, f"{self.describe(path[:4])} must be a string, number, boolean or a list of them")
            return
        wanted = " or ".join(_JSON_TYPE_NAMES[name] for name in names)
        message = f"{self.describe(path)} must be {wanted}, not {_kind_of(instance)}"
        if field == "mode" and isinstance(instance, int):
            message += '; quote it, e.g. "0755"'
        self.at(pos, message)

    def on_enum(self, path: Path, error: _Error) -> None:
        value = error.instance
        choices = [str(choice) for choice in error.validator_value]
        pos = self.doc.value_position(path)
        field = _field(path)
        shown = value if isinstance(value, str) else _kind_of(value)
        if field == "attrs":
            self.at(pos, f"unknown attribute {shown!r}{did_you_mean(str(value), choices)}")
        elif field == "propagation":
            hint = did_you_mean(str(value), choices) or "; expected " + ", ".join(map(repr, choices))
            self.at(pos, f"unknown propagation {shown!r}{hint}")
        elif field == "kind":
            self.at(pos, f"unknown mountpoint kind {shown!r}; expected 'directory' or 'file'")
        else:
            self.at(pos, f"{self.describe(path)} must be one of " + ", ".join(map(repr, choices)))

    def on_const(self, path: Path, error: _Error) -> None:
        if path == ("version",):
            self.at(
                self.doc.value_position(path),
                f"unsupported plan version {error.instance!r}; this mountplan reads version 1",
            )
        else:
            self.at(self.doc.value_position(path), f"{self.describe(path)} must be {error.validator_value!r}")

    def on_pattern(self, path: Path, error: _Error) -> None:
        value: str = error.instance
        if CONTROL_CHARACTER.search(value):
            return  # the YAML layer reported it, at the string
        pos = self.doc.value_position(path)
        field = _field(path)
        if field == "target" and not (len(path) > 2 and path[-2] == "symlink"):
            if value.startswith("/"):
                message = f"target {value!r} must be relative to its root; drop the leading '/'"
            else:
                message = f"target {value!r} climbs out of its root with '..'"
        elif field == "path" and path[0] == "roots":
            message = f"path {value!r} of root {path[1]!r} must be absolute"
        elif field == "path" and path[0] == "objects":
            where = "must be relative to its root; drop the leading '/'" if value.startswith("/") else "climbs out of its root with '..'"
            message = f"path {value!r} of {self.describe(path[:2])} {where}"
        elif field == "target" and len(path) > 2 and path[-2] == "symlink":
            message = f"link target {value!r} of {self.describe(path[:2])} contains a control character"
        elif field == "type":
            message = f"invalid filesystem type {value!r}"
        elif field == "mode":
            message = f'invalid mode {value!r}: give octal permission bits, e.g. "0755"'
        elif field == "name" and len(path) == 1:
            message = f"invalid plan name {value!r}: {_IDENT_RULE}"
        elif field == "name":
            what = {"objects": "object", "devices": "device directory"}.get(str(path[0]), "mount")
            message = f"invalid {what} name {value!r}: {_IDENT_RULE}"
        elif field == "userns":
            message = f"invalid user namespace {value!r} in {self.describe(path[:-1])}: give an absolute path or 'fd:N'"
        else:
            message = f"invalid root name {value!r} in {self.describe(path)}: {_IDENT_RULE}"
        self.at(pos, message)

    def on_minLength(self, path: Path, error: _Error) -> None:
        self.at(self.doc.value_position(path), f"{self.describe(path)} must not be empty")

    def on_minItems(self, path: Path, error: _Error) -> None:
        self.at(self.doc.value_position(path), f"{self.describe(path)} needs at least one value")

    def on_maxItems(self, path: Path, error: _Error) -> None:
        self.at(
            self.doc.key_position(path),
            f"{self.describe(path)} has {len(error.instance)} entries; the limit is {error.validator_value}",
        )

    def on_minProperties(self, path: Path, error: _Error) -> None:
        self.at(self.doc.value_position(path), "a plan needs at least one root")

    def on_uniqueItems(self, path: Path, error: _Error) -> None:
        seen: set[str] = set()
        what = "attribute" if _field(path) == "attrs" else "mount"
        for index, item in enumerate(error.instance):
            key = json.dumps(item, sort_keys=True)
            if key in seen:
                self.at(
                    self.doc.value_position((*path, index)),
                    f"{what} {item!r} is listed twice in {self.describe(path)}",
                )
            seen.add(key)

    def on_oneOf(self, path: Path, error: _Error) -> None:
        mount = error.instance
        if path and path[0] == "objects":
            kinds = [k for k in ("directory", "file", "symlink") if k in mount]
            self.at(
                self.doc.key_position((*path, kinds[-1])) if len(kinds) > 1 else self.doc.value_position(path),
                f"{self.describe(path)} needs exactly one of 'directory', 'file' or 'symlink'"
                + (f" (it has {', '.join(repr(k) for k in kinds)})" if len(kinds) > 1 else ""),
            )
            return
        if "type" in mount and "bind" in mount:
            later = max(("type", "bind"), key=lambda k: _sort_key(self.doc.key_position((*path, k))))
            self.at(
                self.doc.key_position((*path, later)),
                f"'type' and 'bind' are mutually exclusive in {self.describe(path)}: "
                "a mount is a new filesystem or a bind, not both",
            )
        else:
            self.at(
                self.doc.value_position(path),
                f"{self.describe(path)} needs 'type' (a filesystem mount) or 'bind' (a bind mount)",
            )

    def on_dependentRequired(self, path: Path, error: _Error) -> None:
        mount = error.instance
        if "bind" not in mount:
            return  # already reported: the mount has neither 'type' nor 'bind'
        for key in sorted(error.validator_value):
            if key in mount and "type" not in mount:
                self.at(
                    self.doc.key_position((*path, key)),
                    f"{key!r} applies to filesystem mounts only; {self.describe(path)} is a bind mount",
                )


def _misplaced_idmap(where: str, mount: dict[str, Any]) -> str:
    if "bind" in mount:
        return f"'idmap' of {where} belongs under 'bind' (bind: {{path: ..., idmap: ...}})"
    return f"'idmap' applies to bind mounts only; {where} is a new filesystem (an idmapped mount is a bind of one)"


_IDENT_RULE = "use letters, digits, '_', '.' and '-', starting with a letter or digit (at most 64)"


def _sort_key(pos: Position) -> tuple[int, int]:
    return pos.line, pos.col


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
