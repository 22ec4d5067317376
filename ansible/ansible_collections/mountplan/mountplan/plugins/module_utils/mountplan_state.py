# Copyright: The mountplan authors
# Apache License 2.0 (see LICENSE at the root of the mountplan repository)
"""What the module does for each state: which mountplan commands run, and what the task reports."""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.mountplan.mountplan.plugins.module_utils.mountplan_cli import run_json

#: apply --json's lists of mount names, by outcome.
APPLY_KEYS = ("created", "updated", "replaced", "pruned", "unchanged")


def render_changes(changes: list[dict[str, Any]], kept: list[dict[str, Any]], side: str) -> str:
    """One side (``before``: the live table, ``after``: once applied) of a change set, as diffable text.

    A mount is a line ``NAME  (ROOT:TARGET)``, followed by each field that
    differs with its live or planned value, so a unified diff of the two sides
    shows ``+`` for a mount to create, ``-`` for one to remove and the changed
    values of one to update; a replacement also says why on the ``after`` side.
    """
    lines: list[str] = []
    for change in changes:
        action = change["action"]
        if (side == "before" and action == "create") or (side == "after" and action == "delete"):
            continue
        lines.append(f"{change['mount']}  ({change['root']}:{change['target']})")
        for field in change["fields"]:
            lines.append(f"    {field['field']}: {field['live' if side == 'before' else 'planned']}")
        if side == "after" and action == "replace":
            lines.append(f"    # replaced (-/+): {change['reason']}")
    for change in kept:
        lines.append(f"{change['mount']}  ({change['root']}:{change['target']})  # kept: no longer in the plan")
    return "".join(f"{line}\n" for line in lines)


def has_changes(doc: dict[str, Any]) -> bool:
    """Whether a change set would change anything: a mount to add, change or destroy, or a journal to finish."""
    summary = doc["summary"]
    return bool(summary["add"] or summary["change"] or summary["destroy"] or doc["pending"])


def warn_foreign(module: Any, doc: dict[str, Any]) -> None:
    """A warning per mount beneath a root that mountplan did not make (it never touches them)."""
    for mount in doc["foreign"]:
        module.warn(
            f"foreign mount at {mount['mount_point']} ({mount['fs_type']} {mount['source']}) "
            f"near {mount['near']!r}: left alone"
        )


def ensure_present(module: Any, command: list[str], rename: dict[str, str]) -> dict[str, Any]:
    """Apply the plan. Check mode: plan only. Diff mode: plan, show it, then apply exactly that saved plan."""
    params = module.params
    prune = ["--prune"] if params["prune"] else []
    timeout = ["--lock-timeout", str(params["lock_timeout"])]
    result: dict[str, Any] = {}
    if module.check_mode or module._diff:
        saved = os.path.join(module.tmpdir, "saved-plan.json")
        out = [] if module.check_mode else ["-o", saved]
        doc = run_json(module, [command[0], "plan", *command[1:], *prune, *out], rename)
        warn_foreign(module, doc)
        result.update(
            plan=doc["plan"],
            summary=doc["summary"],
            changes=doc["changes"],
            kept=doc["kept"],
            foreign=doc["foreign"],
            changed=has_changes(doc),
        )
        if module._diff:
            result["diff"] = {
                "before_header": f"{doc['plan']}: mounts now",
                "after_header": f"{doc['plan']}: mounts after apply",
                "before": render_changes(doc["changes"], doc["kept"], "before"),
                "after": render_changes(doc["changes"], doc["kept"], "after"),
            }
        if module.check_mode:
            return result
        # What was shown is what gets done: the saved plan pins the table it was computed
        # from, and apply refuses (exit 8, nothing changed) if it moved in between.
        argv = [command[0], "apply", saved, *timeout]
    else:
        # Nothing to show: apply plans under the state lock itself, so nothing can move in between.
        argv = [command[0], "apply", *command[1:], *prune, *timeout]
    applied = run_json(module, argv, rename)
    result.update({key: applied[key] for key in APPLY_KEYS})
    result["plan"] = applied["plan"]
    result["state_file"] = applied["state_file"]
    result["changed"] = any(applied[key] for key in APPLY_KEYS if key != "unchanged")
    return result


def ensure_absent(module: Any, command: list[str], rename: dict[str, str]) -> dict[str, Any]:
    """Destroy what mountplan made for the plan instance. Check and diff mode: ask status first what that is."""
    params = module.params
    result: dict[str, Any] = {}
    if module.check_mode or module._diff:
        status = run_json(module, [command[0], "status", *command[1:]], rename)
        mounts = status["mounts"]
        result.update(plan=status["plan"], state_file=status["state_file"], mounts=mounts, changed=bool(mounts))
        if module._diff:
            result["diff"] = {
                "before_header": f"{status['plan']}: mounts now",
                "after_header": f"{status['plan']}: mounts after destroy",
                "before": "".join(f"{m['name']}  ({m['root']}:{m['target']})\n" for m in mounts),
                "after": "",
            }
        if module.check_mode:
            return result
    lazy = ["--lazy"] if params["lazy"] else []
    timeout = ["--lock-timeout", str(params["lock_timeout"])]
    destroyed = run_json(module, [command[0], "destroy", *command[1:], *timeout, *lazy], rename)
    result["plan"] = destroyed["plan"]
    result["removed"] = destroyed["removed"]
    result["already_gone"] = destroyed["already_gone"]
    # Forgetting a mount that was already gone rewrites the state file: that is a change too.
    result["changed"] = bool(destroyed["removed"] or destroyed["already_gone"])
    return result
