"""Position-tracking YAML reading: text → plain data plus a line/column for every value."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from mountplan.loader._control import control_character_problem
from mountplan.loader.diagnostics import Diagnostic, Severity
from mountplan.loader.limits import MAX_DEPTH, MAX_FILE_BYTES

__all__ = ["Document", "Path", "Position", "parse"]

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP = _TAG + "seq", _TAG + "map"

# The YAML 1.2 core schema, as editors and check-jsonschema read plans. PyYAML's
# YAML 1.1 rules would turn overlay's `xino: off` into False (dropping the option)
# and `mode: 0755` into 493.
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_SCALAR_RES = {_NULL: _NULL_RE, _BOOL: _BOOL_RE, _INT: _INT_RE, _FLOAT: _FLOAT_RE}

# Characters YAML forbids in a stream (outside the printable set); reported precisely
# here rather than through the reader's byte offsets.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column."""

    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Document:
    """Plain data read from YAML, with where each value (and each mapping key) was written.

    Paths are tuples of mapping keys and sequence indexes, like jsonschema's
    ``absolute_path``. ``raw`` keeps the source text of numbers, which options pass on
    to the kernel exactly as written.
    """

    data: Any
    values: dict[Path, Any]  # yaml Marks, turned into Positions only when asked
    keys: dict[Path, Any]
    raw: dict[Path, str]
    #: Values already reported by the YAML layer (an alias, a mapping with a merge key);
    #: schema errors at exactly these paths would only repeat that report.
    reported: frozenset[Path] = frozenset()

    def value_position(self, path: Path) -> Position:
        """Where the value at ``path`` (or its nearest recorded ancestor) was written."""
        while True:
            mark = self.values.get(path)
            if mark is not None:
                return _position(mark)
            if not path:
                return Position(1, 1)
            path = path[:-1]

    def key_position(self, path: Path) -> Position:
        """Where the mapping key naming ``path`` was written (else its value's position)."""
        mark = self.keys.get(path)
        return _position(mark) if mark is not None else self.value_position(path)


_NUMBER_START = frozenset("0123456789+-.")


_MAYBE_NOT_STR = frozenset("0123456789+-.~nNtTfF")


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _resolve_plain(text: str) -> str:
    """The YAML 1.2 core tag of a plain (unquoted, untagged) scalar."""
    if not text:
        return _NULL
    first = text[0]
    if first not in _MAYBE_NOT_STR:
        return _STR
    if first in _NUMBER_START:
        if _INT_RE.match(text):
            return _INT
        if _FLOAT_RE.match(text):
            return _FLOAT
    elif first in "~nN":
        if _NULL_RE.match(text):
            return _NULL
    elif first in "tTfF" and _BOOL_RE.match(text):
        return _BOOL
    return _STR


_Base: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class PlanLoader(_Base):  # type: ignore[misc]
    """A SafeLoader (libyaml's when available) used only as an event parser.

    Plans are built straight from parse events rather than PyYAML's node
    composer: that keeps every start mark, bounds nesting without recursion, sees
    anchors before they are resolved, and is several times faster.
    """


def _position(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)


def _offset_position(text: str, offset: int) -> Position:
    line_start = text.rfind("\n", 0, offset) + 1
    return Position(text.count("\n", 0, offset) + 1, offset - line_start + 1)


class _Stop(Exception):
    """Reading cannot go on (too deep, or a second document)."""


_AWAIT_KEY: Any = object()
_DISCARD: Any = object()


class _Frame:
    __slots__ = ("container", "discard", "key", "path")

    def __init__(self, container: dict[str, Any] | list[Any], path: Path, discard: bool) -> None:
        self.container = container
        self.path = path
        self.discard = discard
        self.key: Any = _AWAIT_KEY


class _Builder:
    """Turns parse events into plain data, recording positions and rejecting odd YAML."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.values: dict[Path, Any] = {}
        self.keys: dict[Path, Any] = {}
        self.raw: dict[Path, str] = {}
        self.reported: set[Path] = set()
        self.diagnostics: list[Diagnostic] = []
        self.loader_get_event: Any = None

    def error(self, pos: Position, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.filename, pos.line, pos.col, Severity.ERROR, message))

    def build(self, loader: Any) -> Any:
        """Consume one document's events and return its data."""
        get_event = loader.get_event
        event = get_event()  # StreamStart
        event = get_event()
        if isinstance(event, StreamEndEvent):
            return None
        stack: list[_Frame] = []
        result: Any = None
        while True:
            event = get_event()
            if isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                frame = stack.pop()
                value: Any = frame.container
                if not stack:
                    result = value
                    break
                self.deliver(stack[-1], value)
                continue
            parent = stack[-1] if stack else None
            if parent is not None and parent.key is _AWAIT_KEY and isinstance(parent.container, dict):
                self.take_key(parent, event)
                continue
            if parent is None:
                path: Path = ()
                discard = False
            elif isinstance(parent.container, list):
                path = (*parent.path, len(parent.container))
                discard = parent.discard
            else:
                path = (*parent.path, parent.key) if parent.key is not _DISCARD else parent.path
                discard = parent.discard or parent.key is _DISCARD
            mark = event.start_mark
            if not discard:
                self.values[path] = mark
            if isinstance(event, AliasEvent):
                pos = _position(mark)
                self.error(pos, f"YAML alias '*{event.anchor}' is not allowed in a plan; repeat the value")
                self.reported.add(path)
                value = None
            else:
                if event.anchor is not None:
                    self.error(_position(mark), f"YAML anchor '&{event.anchor}' is not allowed in a plan")
                if isinstance(event, ScalarEvent):
                    value = self.scalar(event, path, discard)
                    if value is None and event.value == "" and not discard and path in self.keys:
                        # An empty value has no text of its own; point at its key.
                        self.values[path] = self.keys[path]
                else:
                    is_map = isinstance(event, MappingStartEvent)
                    if event.tag not in (None, "!", _MAP if is_map else _SEQ):
                        self.error(
                            _position(mark), f"YAML tag {_short_tag(event.tag)!r} is not allowed in a plan"
                        )
                    if len(stack) >= MAX_DEPTH:
                        self.error(_position(mark), f"plan nests deeper than {MAX_DEPTH} levels")
                        raise _Stop
                    container: dict[str, Any] | list[Any] = {} if is_map else []
                    stack.append(_Frame(container, path, discard))
                    continue
            if parent is None:
                result = value
                break
            self.deliver(parent, value)
        event = get_event()  # DocumentEnd
        event = get_event()
        if not isinstance(event, StreamEndEvent):
            pos = _position(event.start_mark)
            self.error(pos, "a plan file holds exactly one YAML document; remove the second '---'")
        return result

    def deliver(self, frame: _Frame, value: Any) -> None:
        if isinstance(frame.container, list):
            frame.container.append(value)
            return
        if frame.key is not _DISCARD:
            frame.container[frame.key] = value
        frame.key = _AWAIT_KEY

    def take_key(self, frame: _Frame, event: Any) -> None:
        mark = event.start_mark
        frame.key = _DISCARD
        if not isinstance(event, ScalarEvent):
            if not frame.discard:
                self.error(_position(mark), "mapping keys must be plain strings, not collections or aliases")
            if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
                # Swallow the key's subtree: a discarded frame whose value is dropped too.
                self.skip(frame, event)
            return
        if frame.discard:
            return
        if event.anchor is not None:
            self.error(_position(mark), f"YAML anchor '&{event.anchor}' is not allowed in a plan")
        key = event.value
        problem = control_character_problem(key)
        if problem is not None:
            self.error(_position(mark), problem)
        tag = self.tag_of(event)
        if tag != _STR:
            self.error(_position(mark), f"mapping keys must be strings; quote {key!r}")
            return
        if key == "<<" and event.implicit[0]:
            self.error(_position(mark), "YAML merge keys ('<<') are not allowed in a plan")
            self.reported.add(frame.path)
            return
        child = (*frame.path, key)
        first = self.keys.get(child)
        if first is not None:
            self.error(_position(mark), f"duplicate key {key!r} (first given at line {first.line + 1})")
            return
        self.keys[child] = mark
        frame.key = key

    def skip(self, frame: _Frame, start: Any) -> None:
        """Consume a complex key's events up to its end; its value is then discarded."""
        depth = 1
        while depth:
            event = self.loader_get_event()
            if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    self.error(_position(event.start_mark), f"plan nests deeper than {MAX_DEPTH} levels")
                    raise _Stop
            elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                depth -= 1

    @staticmethod
    def tag_of(event: Any) -> str:
        tag: str | None = event.tag
        if tag is None or tag == "!":
            return _resolve_plain(event.value) if event.implicit[0] else _STR
        return tag

    def scalar(self, event: Any, path: Path, discard: bool) -> Any:
        text: str = event.value
        if not discard:
            problem = control_character_problem(text)
            if problem is not None:
                self.error(_position(event.start_mark), problem)
        tag = self.tag_of(event)
        if tag == _STR:
            return text
        regex = _SCALAR_RES.get(tag)
        if regex is None:
            self.error(_position(event.start_mark), f"YAML tag {_short_tag(tag)!r} is not allowed in a plan")
            return text
        if not regex.match(text):
            self.error(_position(event.start_mark), f"{text!r} is not a valid {_short_tag(tag)}")
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return text.lower() == "true"
        if not discard:
            self.raw[path] = text
        if tag == _INT:
            if text.startswith("0o"):
                return int(text, 0)
            return int(text, 16) if text.startswith("0x") else int(text)
        lowered = text.lower()
        if lowered.endswith("inf"):
            return -math.inf if lowered.startswith("-") else math.inf
        return math.nan if lowered.endswith("nan") else float(text)


def decode(data: str | bytes, filename: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes → text (UTF-8, or UTF-16 with a BOM), refusing files over the size limit."""

    def fail(pos: Position, message: str) -> tuple[None, list[Diagnostic]]:
        return None, [Diagnostic(filename, pos.line, pos.col, Severity.ERROR, message)]

    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        return fail(Position(1, 1), f"plan is {size} bytes; the limit is {MAX_FILE_BYTES} bytes")
    if isinstance(data, bytes):
        raw = data
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                text = raw.decode("utf-16")
            except UnicodeDecodeError:
                return fail(Position(1, 1), "file has a UTF-16 byte-order mark but is not valid UTF-16")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                head = raw[: exc.start]
                line_start = head.rfind(b"\n") + 1
                pos = Position(head.count(b"\n") + 1, len(head[line_start:].decode("utf-8")) + 1)
                return fail(pos, f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8")
    else:
        text = data
    text = text.removeprefix("\ufeff")
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        char = bad.group()
        return fail(
            _offset_position(text, bad.start()),
            f"character U+{ord(char):04X} is not allowed in YAML; remove it or escape it in a quoted string",
        )
    return text, []


def parse(data: str | bytes, filename: str) -> tuple[Document | None, list[Diagnostic]]:
    """Read YAML into a Document; a YAML-level problem yields diagnostics and maybe no Document."""
    text, diagnostics = decode(data, filename)
    if text is None:
        return None, diagnostics
    loader = PlanLoader(text)
    builder = _Builder(filename)
    builder.loader_get_event = loader.get_event
    try:
        result = builder.build(loader)
    except _Stop:
        return None, builder.diagnostics
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _position(mark) if mark is not None else Position(1, 1)
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        builder.error(pos, f"invalid YAML: {message}")
        return None, builder.diagnostics
    except yaml.YAMLError as exc:
        builder.error(Position(1, 1), f"invalid YAML: {exc}")
        return None, builder.diagnostics
    finally:
        loader.dispose()
    document = Document(result, builder.values, builder.keys, builder.raw, frozenset(builder.reported))
    return document, builder.diagnostics
