"""Reading the worker mode's requests: the JSON document, the fds it carries, and what ``run`` asks for.

Everything here only checks and converts; a request that does not hold up is a
:class:`BadRequest` (code 2, like a CLI usage error) and nothing has been changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mountplan._unshare import Namespace

__all__ = ["FORMAT_VERSION", "BadRequest", "RunRequest", "close_all", "no_fds", "parse", "parse_run", "roots_of"]

#: The protocol's version: every request must carry it, every reply does.
FORMAT_VERSION = 1


class BadRequest(Exception):
    """A request the server cannot act on; nothing was changed. Code 2, as a CLI usage error."""

    code = 2


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What a ``run`` request asks for; the fds are the server's copies, closed by whoever ends the run."""

    roots: Mapping[str, int]
    argv: tuple[str, ...]
    #: The command's stdin, stdout, stderr; None where /dev/null stands in.
    stdio: tuple[int | None, int | None, int | None]
    unshare: bool | tuple[str, ...]
    chroot: str | None
    cwd: str | None
    env: Mapping[str, str] | None


def parse(data: bytes) -> dict[str, Any]:
    """The request as a JSON object of this ``format_version``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request must be a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise BadRequest(f"format_version {version!r} is not supported (this server speaks {FORMAT_VERSION})")
    return doc


def no_fds(fds: list[int], op: object) -> None:
    if fds:
        raise BadRequest(f"{op}: takes no fds, {len(fds)} attached")


def roots_of(doc: Mapping[str, Any], fds: list[int], op: str = "apply", *, also_used: frozenset[int] = frozenset()
             ) -> dict[str, int]:
    """Root name -> received fd, from ``"roots": {"NAME": INDEX}``; every attached fd must be named.

    ``also_used`` are indexes another field names (``run``'s ``stdio``).
    """
    raw = doc.get("roots")
    if not isinstance(raw, dict) or not raw:
        raise BadRequest(f'{op}: "roots" must be an object mapping root names to indexes of the attached fds')
    roots: dict[str, int] = {}
    for name, index in raw.items():
        roots[name] = fds[_index(index, fds, f"{op}: root {name!r}")]
    unused = sorted(set(range(len(fds))) - set(raw.values()) - also_used)
    if unused:
        raise BadRequest(f"{op}: attached fd(s) at index {unused} name no root")
    return roots


def parse_run(doc: Mapping[str, Any], fds: list[int]) -> RunRequest:
    """A ``run`` request's fields, checked; the types the protocol documents, or :class:`BadRequest`."""
    argv = doc.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise BadRequest('run: "argv" must be a non-empty array of strings (the command and its arguments)')
    raw_stdio = doc.get("stdio", [None, None, None])
    if not isinstance(raw_stdio, list) or len(raw_stdio) != 3:
        raise BadRequest('run: "stdio" must be an array of 3 entries (stdin, stdout, stderr): fd indexes or null')
    indexes = [None if i is None else _index(i, fds, f"run: stdio[{n}]") for n, i in enumerate(raw_stdio)]
    stdio = (*(None if i is None else fds[i] for i in indexes),)
    roots = roots_of(doc, fds, "run", also_used=frozenset(i for i in indexes if i is not None))
    unshare = doc.get("unshare", True)
    known = sorted(n.value for n in Namespace)
    if not (isinstance(unshare, bool) or isinstance(unshare, list) and all(n in known for n in unshare)):
        raise BadRequest(f'run: "unshare" must be true, false or an array of namespace names (of {", ".join(known)})')
    env = doc.get("env")
    if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise BadRequest('run: "env" must be an object of strings (it replaces the environment)')
    for key in ("chroot", "cwd"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise BadRequest(f'run: "{key}" must be a string')
    return RunRequest(
        roots, tuple(argv), (stdio[0], stdio[1], stdio[2]),
        unshare if isinstance(unshare, bool) else tuple(unshare), doc.get("chroot"), doc.get("cwd"), env,
    )


def _index(index: object, fds: list[int], what: str) -> int:
    if type(index) is not int or not 0 <= index < len(fds):
        raise BadRequest(f"{what}: {index!r} is not the index of an attached fd ({len(fds)} attached)")
    return index


def close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())
