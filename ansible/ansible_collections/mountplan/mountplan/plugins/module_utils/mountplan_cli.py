# Copyright: The mountplan authors
# Apache License 2.0 (see LICENSE at the root of the mountplan repository)
"""Run the ``mountplan`` CLI with ``--json`` on the managed host and read its documents.

The module drives the command line, not the Python API: the JSON documents are
mountplan's versioned contract (``format_version``, schemas in
``mountplan/schema/output``) and its exit codes are documented, so the module
works with whichever Python Ansible picks on the host, whether or not that
interpreter can import mountplan (a pipx or venv install, a distribution package).
"""

from __future__ import annotations

import json
from typing import Any

#: The only ``format_version`` this collection reads; a newer mountplan that bumps
#: it has changed a document's shape incompatibly, so refuse rather than misread.
FORMAT_VERSION = 1

#: Exit code of ``mountplan plan`` when the kernel refuses a mount apply would make.
EXIT_KERNEL_REFUSES = 4


class MountplanFailure(Exception):
    """mountplan failed: ``msg`` is the text Ansible shows, ``details`` become return values."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


def describe_error(command: str, doc: dict[str, Any], rename: dict[str, str]) -> str:
    """One line from a ``--json`` error document: command, exit code, kind, message and every detail.

    ``rename`` maps file names in diagnostics to what the user wrote (the
    temporary file that holds an inline plan is shown as ``content``).
    """
    parts = [f"mountplan {command} failed with exit {doc.get('code')} ({doc.get('error')}): {doc.get('message')}"]
    for diag in doc.get("diagnostics") or []:
        name = rename.get(diag.get("file"), diag.get("file"))
        parts.append(f"{name}:{diag.get('line')}:{diag.get('col')}: {diag.get('severity')}: {diag.get('message')}")
    if doc.get("step"):
        parts.append(f"failed step: {doc['step']}")
    if doc.get("leftovers"):
        parts.append("left for `mountplan recover`: " + ", ".join(doc["leftovers"]))
    return "; ".join(parts)


def run_json(module: Any, argv: list[str], rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``mountplan -q ARGV... --json`` and return its document, or raise :class:`MountplanFailure`.

    A non-zero exit is a failure carrying mountplan's own message and exit code;
    so is ``plan``'s exit 4 (the kernel refuses a mount that apply would make),
    whose document is a change set with ``problems``.
    """
    command = argv[1]
    rc, out, err = module.run_command([*argv[:1], "-q", *argv[1:], "--json"], check_rc=False)
    try:
        doc = json.loads(out)
    except ValueError:
        raise MountplanFailure(
            f"mountplan {command} exited {rc} without a JSON document on stdout: {err.strip() or out.strip()}",
            rc=rc,
            stdout=out,
            stderr=err,
        ) from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
        version = doc.get("format_version") if isinstance(doc, dict) else None
        raise MountplanFailure(
            f"mountplan {command} printed a document of format_version {version!r}; this collection reads "
            f"format_version {FORMAT_VERSION}: install a matching mountplan.mountplan collection",
            rc=rc,
            stdout=out,
            stderr=err,
        )
    if rc == 0:
        return doc
    if "error" in doc:
        raise MountplanFailure(
            describe_error(command, doc, rename or {}),
            rc=rc,
            error=doc["error"],
            diagnostics=doc.get("diagnostics", []),
            leftovers=doc.get("leftovers", []),
            stderr=err,
        )
    if rc == EXIT_KERNEL_REFUSES and doc.get("problems"):
        raise MountplanFailure(
            f"mountplan {command} failed with exit {rc} (KernelError): the kernel refuses what apply would do: "
            + "; ".join(doc["problems"]),
            rc=rc,
            error="KernelError",
            problems=doc["problems"],
            stderr=err,
        )
    raise MountplanFailure(f"mountplan {command} exited {rc}: {err.strip()}", rc=rc, stdout=out, stderr=err)
