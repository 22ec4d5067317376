"""Semantic checks of a bind's ``idmap``: the rules the kernel applies to ``uid_map``/``gid_map`` writes.

kernel/user_namespace.c (map_write, mappings_overlap): at most 340 lines, each
``inside outside count`` with ``count`` >= 1 and no range running past id
4294967294 (``(u32)-1`` is the invalid id); no two inside ranges overlap, nor two
outside ranges; the whole text must fit in one page (4096 bytes, the smallest).
Checking here gives a located diagnostic instead of an EINVAL at apply time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mountplan.loader._yaml import Document, Path, Position

__all__ = ["MAX_ID", "MAX_LINES", "check_idmap"]

#: The largest valid id; 4294967295 is ``(uid_t)-1``.
MAX_ID = 4294967294
#: UID_GID_MAP_MAX_EXTENTS.
MAX_LINES = 340
#: map_write refuses a write of PAGE_SIZE bytes or more; 4096 is the smallest page.
_MAX_TEXT = 4095

_Report = Callable[[Position, str], None]


def check_idmap(doc: Document, path: Path, label: str, idmap: dict[str, Any], report: _Report) -> None:
    """Report every problem of the ``idmap`` mapping at ``path`` (of mount ``label``)."""
    where = f"'idmap' of {label}"
    has_uids, has_gids, has_userns = "uids" in idmap, "gids" in idmap, "userns" in idmap
    if has_userns and (has_uids or has_gids):
        key = "uids" if has_uids else "gids"
        report(doc.key_position((*path, key)),
               f"{where} gives both 'userns' and {key!r}: take an existing user namespace or map ids, not both")
    elif not has_userns and not has_uids:
        if has_gids:
            report(doc.key_position((*path, "gids")), f"{where} has 'gids' without 'uids'; give 'uids' too")
        else:
            report(doc.value_position(path), f"{where} needs 'uids' (a mapping) or 'userns' (an existing user namespace)")
    for key in ("uids", "gids"):
        lines = idmap.get(key)
        if isinstance(lines, list):
            _check_lines(doc, (*path, key), f"{key!r} of {where}", lines, report)


def _check_lines(doc: Document, path: Path, where: str, lines: list[Any], report: _Report) -> None:
    if not lines:
        report(doc.value_position(path), f"{where} needs at least one [inside, outside, count] line")
        return
    if len(lines) > MAX_LINES:
        report(doc.key_position(path), f"{where} has {len(lines)} lines; the kernel takes at most {MAX_LINES}")
        return
    good: list[tuple[int, int, int, int]] = []  # (inside, outside, count, index)
    for index, line in enumerate(lines):
        if not isinstance(line, list) or not all(isinstance(v, int | float) and type(v) is not bool for v in line):
            continue  # the schema reported it
        pos = doc.value_position((*path, index))
        if not all(type(v) is int for v in line):
            # JSON Schema counts 1.0 as an integer; the kernel reads whole numbers only.
            report(pos, f"line {index + 1} of {where} has a number written with a decimal point; ids and counts are whole numbers")
            continue
        if len(line) != 3:
            report(pos, f"line {index + 1} of {where} has {len(line)} numbers; a line is [inside, outside, count]")
            continue
        inside, outside, count = line
        problem = _line_problem(inside, outside, count)
        if problem:
            report(pos, f"line {index + 1} of {where} ({inside}, {outside}, {count}): {problem}")
            continue
        good.append((inside, outside, count, index))
    for column, name in ((0, "inside"), (1, "outside")):
        for first, second in _overlaps(good, column):
            a, b = good[first], good[second]
            report(
                doc.value_position((*path, b[3])),
                f"line {b[3] + 1} of {where}: {name} ids {_span(b[column], b[2])} overlap line {a[3] + 1} "
                f"({_span(a[column], a[2])}); the kernel refuses overlapping {name} ranges",
            )
    text = "".join(f"{i} {o} {c}\n" for i, o, c, _ in good)
    if len(text.encode()) > _MAX_TEXT:
        report(doc.key_position(path), f"{where} is {len(text)} bytes as a map; the kernel takes less than 4096")


def _line_problem(inside: int, outside: int, count: int) -> str:
    if count < 1:
        return "count must be at least 1 (a line with count 0 maps nothing)"
    for name, first in (("inside", inside), ("outside", outside)):
        if first < 0:
            return f"{name} id {first} is negative"
        if first + count - 1 > MAX_ID:
            return f"{name} ids {_span(first, count)} run past the largest id {MAX_ID}"
    return ""


def _span(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}-{first + count - 1}"


def _overlaps(lines: list[tuple[int, int, int, int]], column: int) -> list[tuple[int, int]]:
    """Pairs (earlier line, later line) of indices into ``lines`` whose ranges in ``column`` overlap."""
    out: list[tuple[int, int]] = []
    reported: set[int] = set()
    for j in range(len(lines)):
        for i in range(j):
            a, b = lines[i], lines[j]
            if j not in reported and a[column] < b[column] + b[2] and b[column] < a[column] + a[2]:
                out.append((i, j))
                reported.add(j)
    return out
