"""The compiler's vocabulary: the step kinds, a Step (one graph node), an Edge between mounts, and a fast Step constructor."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Edge", "Step", "StepArgs", "StepKind", "new_step", "root_step"]


class StepKind(enum.Enum):
    """One step at syscall granularity. ``mutating`` steps change the kernel or disk."""

    OPEN_ROOT = "open_root"
    FSOPEN = "fsopen"
    FSCONFIG = "fsconfig"
    CREATE = "fsconfig_create"
    FSMOUNT = "fsmount"
    OPEN_TREE = "open_tree"
    #: a user namespace for an idmapped bind: made with the planned maps (fork + unshare), or opened
    USERNS = "userns"
    SET_ATTR = "mount_setattr"
    ENSURE_MOUNTPOINT = "mkdir"
    RESOLVE_TARGET = "resolve_target"
    #: statx of the detached mount's id (+ clone ids, root evidence), journaled before attaching
    JOURNAL_ID = "journal_id"
    MOVE_MOUNT = "move_mount"
    #: look the target up again beneath the root: the mount must be ours, else detach it by its fd
    VERIFY = "verify_beneath"
    SET_PROPAGATION = "set_propagation"
    UNMOUNT = "unmount"
    REMOVE_MOUNTPOINT = "rmdir"
    #: planned objects (compile_objects.py): open the parent beneath the root, making missing directories
    RESOLVE_PARENT = "resolve_parent"
    MKDIRAT = "mkdirat"
    CREATE_FILE = "openat_create"
    SYMLINKAT = "symlinkat"
    FCHOWN = "fchown"
    FCHMOD = "fchmod"
    #: remove a planned object, only if it is still the inode apply made
    UNLINKAT = "unlinkat"

    @property
    def mutating(self) -> bool:
        return self in _MUTATING


_MUTATING = frozenset(
    {
        StepKind.ENSURE_MOUNTPOINT,
        StepKind.MOVE_MOUNT,
        StepKind.SET_PROPAGATION,
        StepKind.UNMOUNT,
        StepKind.REMOVE_MOUNTPOINT,
        StepKind.RESOLVE_PARENT,
        StepKind.MKDIRAT,
        StepKind.CREATE_FILE,
        StepKind.SYMLINKAT,
        StepKind.FCHOWN,
        StepKind.FCHMOD,
        StepKind.UNLINKAT,
    }
)


@dataclass(frozen=True, slots=True)
class Step:
    """A node of the step graph. ``args`` are shown in ``plan --steps``."""

    id: str
    kind: StepKind
    mount: str | None
    root: str
    args: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args)
        who = self.mount if self.mount is not None else f"root {self.root}"
        return f"{self.kind.value:<16} {who}{'  ' + args if args else ''}"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "mount": self.mount,
            "root": self.root,
            "args": dict(self.args),
        }


@dataclass(frozen=True, slots=True)
class Edge:
    """Why one mount must come before another (shown in cycle reports and graphs)."""

    before: str
    after: str
    reason: str



#: A step's arguments as ``plan --steps`` shows them: (name, value) pairs.
StepArgs = tuple[tuple[str, str], ...]


# A frozen dataclass's __init__ stores each field with object.__setattr__, paying
# a global and an attribute lookup per field; the slots' own descriptors make the
# same stores for a third of the cost, and 10,000 mounts are 87,000 steps. Steps
# stay frozen to everyone else.
_set_step_id: Callable[[Step, str], None] = Step.__dict__["id"].__set__
_set_step_kind: Callable[[Step, StepKind], None] = Step.__dict__["kind"].__set__
_set_step_mount: Callable[[Step, str | None], None] = Step.__dict__["mount"].__set__
_set_step_root: Callable[[Step, str], None] = Step.__dict__["root"].__set__
_set_step_args: Callable[[Step, StepArgs], None] = Step.__dict__["args"].__set__


def new_step(id: str, kind: StepKind, mount: str | None, root: str, args: StepArgs) -> Step:
    """Exactly ``Step(id, kind, mount, root, args)``, built faster (see above)."""
    step = object.__new__(Step)
    _set_step_id(step, id)
    _set_step_kind(step, kind)
    _set_step_mount(step, mount)
    _set_step_root(step, root)
    _set_step_args(step, args)
    return step


def root_step(root: str) -> Step:
    return Step(id=f"root:{root}", kind=StepKind.OPEN_ROOT, mount=None, root=root)

