#!/usr/bin/python
# Copyright: The mountplan authors
# Apache License 2.0 (see LICENSE at the root of the mountplan repository)
"""Ansible module mountplan.mountplan.plan: apply or destroy a mountplan plan on the managed host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan
short_description: Apply or destroy a mountplan mount plan on the managed host
version_added: "0.1.0"
description:
  - Makes the mounts a L(mountplan,https://github.com/mountplan/mountplan) plan describes
    (O(state=present)), or removes the mounts mountplan made for it (O(state=absent)), on
    the managed host, by running the C(mountplan) command there with C(--json).
  - With O(state=present) the module runs C(mountplan apply), which plans and applies
    under mountplan's state lock. In diff mode it runs C(mountplan plan -o FILE), shows
    that change set, then runs C(mountplan apply FILE), which carries out exactly the
    changes shown, or fails with exit 8 and changes nothing if the mount table moved in
    between.
  - Idempotent. RV(ignore:changed) is V(true) only when mountplan created, updated,
    replaced, pruned or removed a mount; a second run with the same plan reports
    V(false).
  - Check mode runs C(mountplan plan) (state present) or C(mountplan status)
    (state absent), which change nothing; RV(ignore:changed) then says whether a real
    run would change something. In check and diff mode, a mount beneath a root that
    mountplan did not make is reported as a warning (it is never touched).
  - Every mountplan failure (an invalid plan, a missing root, a step the kernel
    refuses, a busy mount, a held lock) is an Ansible failure whose message is
    mountplan's own, with its exit code in RV(rc). A failed apply has been rolled back
    by mountplan; what it could not undo is listed in RV(leftovers).
options:
  plan:
    description:
      - Path of the plan file (YAML) on the managed host.
      - Exactly one of O(plan) and O(content) is required.
    type: path
  content:
    description:
      - The plan itself, as YAML text. It is written to a private temporary file on
        the managed host; diagnostics name it C(content).
      - Exactly one of O(plan) and O(content) is required.
    type: str
  roots:
    description:
      - The plan's roots, a mapping of root name to an absolute directory on the
        managed host (C(mountplan --root NAME=DIR)).
      - A root the plan gives a path to may be left out; a root without a path must be
        given here.
    type: dict
    default: {}
  state:
    description:
      - V(present) makes the mounts the plan describes (C(mountplan apply)).
      - V(absent) removes every mount mountplan made for this plan instance
        (C(mountplan destroy)).
    type: str
    choices: [present, absent]
    default: present
  state_dir:
    description:
      - mountplan's state and journal directory on the managed host
        (C(mountplan --state-dir)); it must be owned by the remote user and not
        writable by others.
      - Defaults to mountplan's own default, C(/run/mountplan) for root and
        C($XDG_RUNTIME_DIR/mountplan) otherwise.
    type: path
  prune:
    description:
      - With O(state=present), also remove mounts mountplan made for this plan instance
        that the plan no longer lists (C(mountplan apply --prune)). Without it they are
        kept and returned in RV(kept).
      - Only valid with O(state=present).
    type: bool
    default: false
  lazy:
    description:
      - With O(state=absent), detach busy mounts (C(MNT_DETACH), C(mountplan destroy
        --lazy)) instead of failing with the processes that hold them.
      - Only valid with O(state=absent).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for the plan instance's state lock when another mountplan holds
        it (C(mountplan --lock-timeout)); past it the task fails with exit 6.
    type: float
    default: 30
  executable:
    description:
      - Path of the C(mountplan) command on the managed host. Defaults to the one
        found on E(PATH).
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Linux only; the mount API mountplan uses needs Linux 5.2 or later, and making mounts
    needs C(CAP_SYS_ADMIN) (run as root, with O(ignore:become), or inside a user and
    mount namespace).
  - The module needs no Python library on the managed host, only the C(mountplan)
    command (C(pip install mountplan)); it reads mountplan's C(--json) documents of
    C(format_version) 1.
  - Mounts do not survive a reboot and neither does mountplan's default state
    directory; run the play again after a reboot.
seealso:
  - name: mountplan and Ansible
    description: How to drive mountplan across a fleet with this collection.
    link: https://github.com/mountplan/mountplan/blob/main/docs/ansible.md
  - name: mountplan command line
    description: The commands, JSON documents and exit codes the module relies on.
    link: https://github.com/mountplan/mountplan/blob/main/docs/cli.md
  - module: ansible.posix.mount
requirements:
  - mountplan 0.1.0 or later on the managed host
author:
  - The mountplan authors (@mountplan)
"""

EXAMPLES = r"""
- name: Mount a build sandbox from a plan file on the host
  mountplan.mountplan.plan:
    plan: /etc/mountplan/build-action.yaml
    roots:
      input: /srv/action/root

- name: Mount a scratch tmpfs from an inline plan, pruning mounts it no longer lists
  mountplan.mountplan.plan:
    content: |
      version: 1
      name: scratch
      roots: {data: {}}
      mounts:
        - {name: scratch, root: data, target: scratch, type: tmpfs, options: {size: 64M}}
    roots:
      data: /srv/data
    prune: true

- name: Remove the sandbox's mounts, detaching busy ones
  mountplan.mountplan.plan:
    plan: /etc/mountplan/build-action.yaml
    roots:
      input: /srv/action/root
    state: absent
    lazy: true
"""

RETURN = r"""
plan:
  description: The plan's name.
  returned: success
  type: str
  sample: scratch
rc:
  description: mountplan's exit code (see mountplan's docs/cli.md); 0 on success.
  returned: always
  type: int
  sample: 0
summary:
  description: How many mounts the plan adds, changes and destroys (C(mountplan plan)).
  returned: state=present, in check mode or diff mode
  type: dict
  sample: {"add": 1, "change": 0, "destroy": 0}
changes:
  description:
    - The change set C(mountplan plan --json) computed, one entry per mount in the plan
      (and per mount to prune); C(action) is one of V(noop), V(create), V(update),
      V(replace), V(delete), and C(fields) lists what differs.
  returned: state=present, in check mode or diff mode
  type: list
  elements: dict
  sample: [{"mount": "scratch", "root": "data", "target": "scratch", "action": "create", "symbol": "+",
            "fields": [], "reason": "not mounted", "mnt_id": null}]
kept:
  description: Mounts mountplan made that the plan no longer lists, left mounted (see O(prune)).
  returned: state=present, in check mode or diff mode
  type: list
  elements: dict
foreign:
  description: Mounts beneath a root that mountplan did not make; they are left alone (and warned about).
  returned: state=present, in check mode or diff mode
  type: list
  elements: dict
created:
  description: Names of the mounts apply created.
  returned: state=present, not in check mode
  type: list
  elements: str
  sample: ["scratch"]
updated:
  description: Names of the mounts apply updated in place.
  returned: state=present, not in check mode
  type: list
  elements: str
replaced:
  description: Names of the mounts apply replaced.
  returned: state=present, not in check mode
  type: list
  elements: str
pruned:
  description: Names of the mounts apply removed because the plan no longer lists them.
  returned: state=present, not in check mode
  type: list
  elements: str
unchanged:
  description: Names of the mounts that already matched the plan.
  returned: state=present, not in check mode
  type: list
  elements: str
state_file:
  description: mountplan's state file for this plan instance on the managed host.
  returned: state=present when applied; state=absent in check mode or diff mode
  type: str
  sample: /run/mountplan/scratch-6134e1168bc4.state.json
mounts:
  description: The mounts mountplan managed for this plan instance before the task (C(mountplan status --json)).
  returned: state=absent, in check mode or diff mode
  type: list
  elements: dict
removed:
  description: Names of the mounts destroy unmounted.
  returned: state=absent, not in check mode
  type: list
  elements: str
already_gone:
  description: Names of the mounts the state listed but that were no longer mounted (forgotten).
  returned: state=absent, not in check mode
  type: list
  elements: str
error:
  description:
    - The kind of mountplan error (C(PlanError), C(RootError), C(ExecutionError), C(BusyError), ...), as
      its C(--json) error document names it.
    - V(KernelError) when C(mountplan plan) (check mode) found that the kernel refuses a mount apply
      would make.
  returned: failure
  type: str
  sample: PlanError
diagnostics:
  description: Every problem found in an invalid plan, with line and column.
  returned: failure, when the plan is invalid
  type: list
  elements: dict
leftovers:
  description: What a failed apply or destroy could not undo (C(mountplan recover) removes it).
  returned: failure, when something is left
  type: list
  elements: str
problems:
  description: What the kernel refuses among the mounts apply would make.
  returned: failure, when C(mountplan plan) exits 4
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-untyped]
from ansible_collections.mountplan.mountplan.plugins.module_utils.mountplan_cli import MountplanFailure
from ansible_collections.mountplan.mountplan.plugins.module_utils.mountplan_state import (
    ensure_absent,
    ensure_present,
)


def argument_spec() -> dict[str, dict[str, object]]:
    """The module's options (DOCUMENTATION describes each; tests/ansible checks they agree)."""
    return {
        "plan": {"type": "path"},
        "content": {"type": "str"},
        "roots": {"type": "dict", "default": {}},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "state_dir": {"type": "path"},
        "prune": {"type": "bool", "default": False},
        "lazy": {"type": "bool", "default": False},
        "lock_timeout": {"type": "float", "default": 30.0},
        "executable": {"type": "path"},
    }


def check_options(module: AnsibleModule) -> list[str]:
    """Refuse option combinations that would do nothing, before mountplan runs; the ``--root`` arguments."""
    params = module.params
    if params["prune"] and params["state"] != "present":
        module.fail_json(msg="prune: only valid with state=present (destroy removes every mount of the plan)")
    if params["lazy"] and params["state"] != "absent":
        module.fail_json(msg="lazy: only valid with state=absent (it detaches busy mounts on destroy)")
    arguments: list[str] = []
    for name, path in sorted(params["roots"].items()):
        # Relative to what? The module's working directory on the host is Ansible's, not the user's.
        if not isinstance(path, str) or not os.path.isabs(path):
            module.fail_json(msg=f"roots.{name}: {path!r} is not an absolute path on the managed host")
        arguments += ["--root", f"{name}={path}"]
    return arguments


def plan_file(module: AnsibleModule) -> tuple[str, dict[str, str]]:
    """The plan's path on the host (an inline plan goes to a private temporary file) and names for diagnostics."""
    if module.params["plan"] is not None:
        return module.params["plan"], {}
    path = os.path.join(module.tmpdir, "plan.yaml")
    # Not stdin: diff mode saves the plan (`plan -o`), and a saved plan embeds its file's text.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(module.params["content"])
    return path, {path: "content"}


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("plan", "content")],
        required_one_of=[("plan", "content")],
        supports_check_mode=True,
    )
    roots = check_options(module)
    executable = module.params["executable"] or module.get_bin_path("mountplan", required=True)
    path, rename = plan_file(module)
    state_dir = ["--state-dir", module.params["state_dir"]] if module.params["state_dir"] else []
    # [mountplan, PLAN, --root..., --state-dir]: each step puts its command after the executable.
    command = [executable, path, *roots, *state_dir]
    try:
        if module.params["state"] == "present":
            result = ensure_present(module, command, rename)
        else:
            result = ensure_absent(module, command, rename)
    except MountplanFailure as failure:
        module.fail_json(msg=failure.msg, **failure.details)
    module.exit_json(rc=0, **result)


if __name__ == "__main__":
    main()
