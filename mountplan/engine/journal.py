"""Journal lines: the compact one-line format, and the checks a line must pass before recovery acts on it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------- journal lines

#: One encoder for journal lines: json.dumps with options builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_quote = json.encoder.encode_basestring_ascii


def journal_line(seq: int, entry: dict[str, Any]) -> str:
    """One compact JSON object per line, ``seq`` first.

    Journal entries are flat (names, paths, ids, flags), written a few times per
    mount: formatting the scalars directly costs half of JSONEncoder.encode.
    """
    parts = [f'{{"seq":{seq}']
    for key, value in entry.items():
        kind = type(value)
        if kind is str:
            text = _quote(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int:
            text = str(value)
        else:
            text = _COMPACT.encode(value)
        parts.append(f"{_quote(key)}:{text}")
    return ",".join(parts) + "}\n"


def all_uints(*values: Any) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def _is_root(v: Any) -> bool:
    return isinstance(v, dict) and type(v.get("path")) is str and all_uints(v.get("dev"), v.get("ino"))


def _is_restore(v: Any) -> bool:
    return (isinstance(v, dict) and all_uints(v.get("attrs"), v.get("clear")) and type(v.get("propagation")) is str
            and isinstance(v.get("options"), dict)
            and all(type(x) is str or x is None for x in v["options"].values()))


def _optional(e: dict[str, Any], key: str, kind: type) -> bool:
    return key not in e or type(e[key]) is kind


def valid_submounts(e: dict[str, Any]) -> bool:
    return "submounts" not in e or isinstance(e["submounts"], list) and all_uints(*e["submounts"])


def _entry_problem(e: Any) -> str | None:
    """Why a decoded journal line is not an entry the engine can act on, or None.

    The fields and types are the ones executor.py writes; recovery trusts them.
    """
    if not isinstance(e, dict):
        return "not a JSON object"
    op = e.get("op")
    if not all_uints(e.get("seq")) or type(op) is not str:
        return "'seq' is not a non-negative integer or 'op' is not a string"
    if op == "begin":
        roots = e.get("roots")
        ok = isinstance(roots, dict) and all(type(k) is str and _is_root(v) for k, v in roots.items())
        return None if ok and _optional(e, "plan", str) and _optional(e, "recover", bool) else "malformed header"
    if op == "mklink" and type(e.get("link")) is not str:
        return "malformed 'mklink' entry (link)"
    if op == "chmod":
        r = e.get("restore")
        ok = (type(e.get("root")) is str and type(e.get("path")) is str and all_uints(e.get("dev"), e.get("ino"))
              and isinstance(r, dict) and all(type(r.get(k)) is int for k in ("mode", "uid", "gid")))
        return None if ok else "malformed 'chmod' entry (root, path, dev, ino, restore)"
    if op in ("mount", "mkdir", "mkfile", "update", "mklink"):
        if not (type(e.get("root")) is str and type(e.get("path")) is str and _optional(e, "mount", str)
                and _optional(e, "recursive", bool) and _optional(e, "unique", bool) and valid_submounts(e)
                and (all_uints(e["mnt_id"]) if "mnt_id" in e else op in ("mkdir", "mkfile", "mklink"))):
            return f"malformed {op!r} entry (root, path, mount, mnt_id, unique, recursive, submounts)"
        return None if op != "update" or _is_restore(e.get("restore")) else "malformed 'restore' of an update"
    if op == "created":
        btime = e.get("btime")  # absent in journals written before birth times were recorded
        ok = all_uints(e.get("ref"), e.get("dev"), e.get("ino")) and (btime is None or type(btime) is int)
        return None if ok else "malformed 'created' entry"
    if op in ("undone", "attached"):
        return None if all_uints(e.get("ref")) and valid_submounts(e) else f"malformed {op!r} entry"
    return None  # an op this version does not know: passed on, the engine decides (seq and op are sound)


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A journal line that is not a usable entry: its 1-based number, its start, and why."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a journal holds: its usable entries, its malformed lines, and whether the last line was torn.

    A torn last line (no newline, not JSON) is what a process killed mid-write
    leaves: normal, not malformed.
    """

    entries: tuple[dict[str, Any], ...]
    malformed: tuple[MalformedLine, ...]
    torn: bool


def parse_journal(raw: bytes) -> JournalContents:
    """Split a journal into usable entries and malformed lines; never raises on content."""
    lines = raw.split(b"\n")
    entries: list[dict[str, Any]] = []
    malformed: list[MalformedLine] = []
    torn = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:
            if number == len(lines):  # no newline after it: the write was cut short
                torn = True
                continue
            why: str | None = f"not JSON ({str(exc)[:80]})"
        else:
            why = _entry_problem(entry)
        if why is None:
            entries.append(entry)
        else:
            malformed.append(MalformedLine(number, line[:120].decode("utf-8", "replace"), why))
    return JournalContents(tuple(entries), tuple(malformed), torn)


def parse_proof(value: Any) -> list[int | None] | None:
    """A mount's recorded root evidence, ``[major, minor, ino, btime-or-None]``; TypeError if malformed."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4 or not all_uints(*value[:3])
            or not (value[3] is None or type(value[3]) is int)):
        raise TypeError("'proof' is not [major, minor, ino, btime]")
    return list(value)
