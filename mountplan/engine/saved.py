"""Saved plans: what ``mountplan plan -o FILE`` writes and ``mountplan apply FILE`` runs.

A saved plan pins everything the reviewed change set was computed from, so that
applying it later does exactly what the reviewer saw or nothing at all:

* the plan's own YAML text (editing the plan file afterwards changes nothing);
* each root's path and identity (device and inode of the directory);
* the state directory that state lives in (absolute, as given to ``plan -o``):
  ``apply FILE`` uses it unless told another, and a different one is refused
  by name rather than reported as a state that moved on;
* a digest of mountplan's state file for this plan instance;
* a snapshot of every live mount at or beneath a root, plus the mounts the
  state file names (unique id, mount point, type, source, options, attributes,
  propagation);
* the change set itself.

``apply FILE`` re-reads all of these under the state lock and refuses with
:class:`~mountplan.errors.StalePlanError` (exit 8) when any differs. Mounts
elsewhere in the namespace (other containers, other plans' roots) do not make a
saved plan stale; mounts on bind sources outside the roots are not covered.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mountplan.errors import PlanError, StalePlanError
from mountplan.livetable import LiveMount, LiveTable

from .state import State, write_atomic

KIND = "mountplan/saved-plan"
#: 2: the plan records its state directory (``state_dir``); format 1 files still read, without one.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

#: A saved plan is a JSON document; anything larger is not one of ours.
MAX_SAVED_BYTES = 64 * 1024 * 1024


def _record(m: LiveMount) -> dict[str, Any]:
    return {
        "id": m.mnt_id if m.mnt_id is not None else m.mnt_id_old,
        "mount_point": m.mount_point,
        "fs_type": m.fs_type,
        "source": m.source,
        "options": ",".join(m.super_options),
        "attrs": int(m.attrs),
        "propagation": m.propagation.name.lower(),
    }


def live_snapshot(live: LiveTable, root_dirs: Iterable[str], managed_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The part of the live table a plan's changes depend on, in a stable order."""
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    for path in sorted(set(root_dirs)):
        for m in live.beneath(path):
            rec = _record(m)
            seen[(rec["id"], rec["mount_point"])] = rec
    for mnt_id in managed_ids:
        found = live.by_id(mnt_id)
        if found is not None:
            rec = _record(found)
            seen[(rec["id"], rec["mount_point"])] = rec
    return [seen[key] for key in sorted(seen)]


def state_digest(state: State | None) -> str:
    """Digest of the committed state (what mountplan believes it manages)."""
    if state is None or state.is_empty:
        return "empty"
    text = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


#: The fields of a live-table record and their JSON types (``_record`` writes them).
_RECORD_TYPES: Mapping[str, type] = {
    "id": int, "mount_point": str, "fs_type": str, "source": str, "options": str, "attrs": int, "propagation": str,
}


def _check_record(r: Any) -> dict[str, Any]:
    """A ``live`` entry of a saved plan, or TypeError naming what is wrong with it."""
    if not isinstance(r, dict):
        raise TypeError(f"live entry {str(r)[:60]!r} is not an object")
    for key, kind in _RECORD_TYPES.items():
        if type(r.get(key)) is not kind:
            raise TypeError(f"live entry {r.get('mount_point')!r}: {key!r} is not {kind.__name__}")
    return dict(r)


def _changed(saved: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    """Human-readable differences between two snapshots, '+' new, '-' gone, '~' changed."""
    before = {(r["id"], r["mount_point"]): r for r in saved}
    after = {(r["id"], r["mount_point"]): r for r in now}
    out: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if old is None:
            assert new is not None
            out.append(f"+ {new['mount_point']} ({new['fs_type']} {new['source']}, id {new['id']})")
        elif new is None:
            out.append(f"- {old['mount_point']} ({old['fs_type']} {old['source']}, id {old['id']})")
        else:
            fields = sorted(k for k in old if old[k] != new.get(k))
            out.append(f"~ {new['mount_point']} (id {new['id']}: {', '.join(fields)})")
    return out


@dataclass(frozen=True, slots=True)
class SavedPlan:
    """A reviewed change set and everything it was computed from."""

    plan_name: str
    plan_file: str
    plan_text: str
    roots: Mapping[str, Mapping[str, Any]]  # name -> {"path", "dev", "ino"}
    prune: bool
    state_digest: str
    live: tuple[Mapping[str, Any], ...]
    changes: Mapping[str, Any]  # ChangeSet.to_json()
    #: Absolute path of the state directory the plan was computed against (None: a format 1 file).
    state_dir: str | None = None

    # ------------------------------------------------------------------ checks

    def check_state_dir(self, state_dir: str) -> None:
        """Refuse, naming the recorded directory, when ``state_dir`` is not the one the plan was saved with.

        Compared as resolved paths (a path through a symlinked parent is the same directory).
        Its state is elsewhere, so the digest would differ for no reason anyone
        did; this says what is actually wrong.
        """
        if self.state_dir is not None and not same_dir(self.state_dir, state_dir):
            raise StalePlanError(
                f"saved plan for {self.plan_name!r} was not applied, nothing was changed: "
                f"this saved plan's state lives in {self.state_dir}; run with --state-dir {self.state_dir} "
                f"(not {state_dir}), or plan again with --state-dir {state_dir}"
            )

    def check_roots(self, identities: Mapping[str, Mapping[str, Any]]) -> None:
        """Refuse when a root is now a different directory than when the plan was made."""
        for name, then in sorted(self.roots.items()):
            now = identities.get(name)
            if now is None:
                raise StalePlanError(f"saved plan: root {name!r} was not opened")
            if (int(now["dev"]), int(now["ino"])) != (int(then["dev"]), int(then["ino"])):
                raise StalePlanError(
                    f"saved plan is stale: root {name!r} ({now['path']}) is not the directory the plan was made for "
                    f"(device/inode {then['dev']}/{then['ino']} then, {now['dev']}/{now['ino']} now); "
                    "run `mountplan plan -o FILE` again"
                )

    def check_live(self, state: State | None, live: list[dict[str, Any]]) -> None:
        """Refuse when the state file or the mounts beneath the roots changed since the plan was made."""
        problems: list[str] = []
        if state_digest(state) != self.state_digest:
            problems.append(
                "mountplan's state for this plan changed (another apply, destroy or recover ran"
                + (")" if self.state_dir is not None else
                   ", or --state-dir is not the one it was saved with: a format 1 saved plan does not record it)")
            )
        differences = _changed([dict(r) for r in self.live], live)
        if differences:
            shown = differences[:8] + ([f"... and {len(differences) - 8} more"] if len(differences) > 8 else [])
            problems.append("the live mount table changed: " + "; ".join(shown))
        if problems:
            raise StalePlanError(
                f"saved plan for {self.plan_name!r} is stale, nothing was changed: "
                + "; ".join(problems)
                + ". Review it again with `mountplan plan -o FILE`"
            )

    def check_changes(self, changes: Mapping[str, Any]) -> None:
        """Refuse when the change set computed now differs from the reviewed one."""
        if dict(changes) != dict(self.changes):
            raise StalePlanError(
                f"saved plan for {self.plan_name!r} is stale: the changes computed now differ from the saved ones "
                "(was mountplan upgraded?). Review it again with `mountplan plan -o FILE`"
            )

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "plan": {
                "name": self.plan_name,
                "file": self.plan_file,
                "text": self.plan_text,
                "sha256": hashlib.sha256(self.plan_text.encode()).hexdigest(),
            },
            "roots": {k: dict(v) for k, v in sorted(self.roots.items())},
            "prune": self.prune,
            "state_dir": self.state_dir,
            "state_digest": self.state_digest,
            "live": [dict(r) for r in self.live],
            "changes": dict(self.changes),
        }

    @classmethod
    def from_json(cls, data: Any, *, filename: str) -> SavedPlan:
        from mountplan.loader import Diagnostic, Severity

        def bad(message: str) -> PlanError:
            return PlanError([Diagnostic(filename, 1, 1, Severity.ERROR, f"not a usable saved plan: {message}")])

        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise bad(f"'kind' is not {KIND!r}")
        version = data.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise bad(f"format_version {version!r}; this mountplan reads {', '.join(map(str, READABLE_VERSIONS))}")
        try:
            plan = data["plan"]
            text = str(plan["text"])
            if hashlib.sha256(text.encode()).hexdigest() != plan["sha256"]:
                raise bad("the embedded plan text does not match its sha256 (edited by hand?)")
            roots = {str(k): {"path": str(v["path"]), "dev": int(v["dev"]), "ino": int(v["ino"])} for k, v in data["roots"].items()}
            state_dir = data["state_dir"] if version >= 2 else None
            if state_dir is not None and not (isinstance(state_dir, str) and os.path.isabs(state_dir)):
                raise bad(f"state_dir {str(state_dir)[:60]!r} is not an absolute path")
            return cls(
                plan_name=str(plan["name"]),
                plan_file=str(plan["file"]),
                plan_text=text,
                roots=roots,
                prune=bool(data["prune"]),
                state_digest=str(data["state_digest"]),
                live=tuple(_check_record(r) for r in data["live"]),
                changes=dict(data["changes"]),
                state_dir=state_dir,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise bad(f"missing or malformed field ({exc!r})") from None

    def write(self, path: str) -> None:
        """Write atomically (a reviewer never sees half a plan file); durable, as it may sit on a disk.

        :class:`~mountplan.errors.StateError` when ``path`` is not a regular file
        (a device, a directory, a FIFO) or cannot be written; nothing is left behind.
        """
        write_atomic(path, (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode(), 0o644)


def same_dir(a: str, b: str) -> bool:
    """Whether two state-directory paths name the same directory (resolved; neither need exist)."""
    return os.path.realpath(a) == os.path.realpath(b)


def read_saved_plan(path: str) -> SavedPlan | None:
    """The saved plan in ``path``, or None when the file is not one (e.g. a YAML plan)."""
    # O_NONBLOCK and a regular-file check: a FIFO (or a device) given as the plan
    # must not hang or be consumed here; the loader reports what it is.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # the YAML loader reports unreadable files with a position
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_SAVED_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not raw.lstrip().startswith(b"{") or len(raw) > MAX_SAVED_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # a YAML flow mapping, perhaps: not ours
    except RecursionError:
        from mountplan.loader import Diagnostic, Severity

        message = "not a usable saved plan: JSON nested too deeply"
        raise PlanError([Diagnostic(path, 1, 1, Severity.ERROR, message)]) from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        return None
    return SavedPlan.from_json(data, filename=path)
