"""JSON Schema validation of a plan: the packaged schema, its validators, and the located diagnostics.

The fast path for common valid mounts is :mod:`mountplan.loader._fastcheck`;
the translation of jsonschema's errors is :mod:`mountplan.loader._translate`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from mountplan.loader._fastcheck import FS_TYPE_RE
from mountplan.loader._fastcheck import is_surely_valid_mount as _is_surely_valid_mount
from mountplan.loader._translate import Translator
from mountplan.loader._yaml import Document
from mountplan.loader.diagnostics import Diagnostic, Severity

__all__ = ["FS_TYPE_RE", "load_schema", "target_pattern", "validate"]


@functools.cache
def _schema_text() -> str:
    return importlib.resources.files("mountplan").joinpath("schema/mountplan.schema.json").read_text("utf-8")


def load_schema() -> dict[str, Any]:
    """A fresh copy of the packaged plan schema."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


@functools.cache
def _validators() -> tuple[Draft202012Validator, Draft202012Validator, re.Pattern[str], re.Pattern[str]]:
    """The plan validator with mount items left open, and one for a single mount.

    Mounts are checked one by one so that the common, valid ones can skip
    jsonschema (see _is_surely_valid_mount): it costs ~150 µs a mount.
    """
    schema = _without_semantic_rules(load_schema())
    mount = schema["$defs"]["mount"]
    shell = _without_semantic_rules(load_schema())
    shell["properties"]["mounts"]["items"] = True
    ident = re.compile(schema["properties"]["name"]["pattern"])
    target = re.compile(mount["properties"]["target"]["pattern"])
    return Draft202012Validator(shell), Draft202012Validator(mount), ident, target


def _without_semantic_rules(node: Any) -> Any:
    """``node`` without the ``allOf`` items marked ``x-semantic-check``.

    Those items repeat, for editors and check-jsonschema, rules that
    mountplan.loader._semantic checks with its own located messages (one atime
    mode, bind path absolute or beneath its root, file mountpoints for binds
    only); jsonschema would report each a second time, in its words.
    """
    if isinstance(node, list):
        return [_without_semantic_rules(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: _without_semantic_rules(value) for key, value in node.items()}
    if "allOf" in result:
        kept = [item for item in result["allOf"] if not (isinstance(item, dict) and "x-semantic-check" in item)]
        if kept:
            result["allOf"] = kept
        else:
            del result["allOf"]
    return result


def target_pattern() -> re.Pattern[str]:
    """The schema's pattern for a target (relative, not climbing)."""
    return _validators()[3]


def _iter_errors(data: Any) -> Iterator[ValidationError]:
    shell, mount_validator, ident, target_re = _validators()
    yield from shell.iter_errors(data)
    mounts = data.get("mounts") if isinstance(data, dict) else None
    if not isinstance(mounts, list):
        return
    for index, mount in enumerate(mounts):
        if _is_surely_valid_mount(mount, ident, target_re):
            continue
        for error in mount_validator.iter_errors(mount):
            error.path.extendleft([index, "mounts"])
            yield error


def validate(doc: Document, filename: str) -> list[Diagnostic]:
    """Every schema violation in ``doc`` as a located diagnostic."""
    if doc.data is None:
        return [
            Diagnostic(
                filename,
                1,
                1,
                Severity.ERROR,
                "the plan is empty; it needs 'version', 'name', 'roots' and 'mounts'",
            )
        ]
    translator = Translator(doc, filename)
    errors = [error for error in _iter_errors(doc.data) if tuple(error.absolute_path) not in doc.reported]
    # A value of the wrong type also fails its const/enum/pattern/oneOf; say only the first.
    mistyped = {tuple(error.absolute_path) for error in errors if error.validator == "type"}
    for error in errors:
        if error.validator == "type" or tuple(error.absolute_path) not in mistyped:
            translator.translate(error)
    return translator.diagnostics
    return translator.diagnostics
