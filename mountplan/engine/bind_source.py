"""A bind's source, cloned and named one way for apply and for ``plan``'s idmap probe.

The probe is only worth its answer if it asks the kernel about the very clone
apply will make: same open_tree flags, same resolution beneath the root.
"""

from __future__ import annotations

from mountplan._kernel import AT_FDCWD, Fd, OpenTreeFlag
from mountplan.errors import RootError
from mountplan.model import MountSpec

from .context import Context
from .roots import O_PATH_ANY, RootSet, resolve

__all__ = ["bind_source_path", "clone_bind_source"]


def clone_bind_source(ctx: Context, spec: MountSpec, rootset: RootSet) -> Fd:
    """A detached clone (recursive if the bind is) of ``spec``'s source; a source in a root is pinned beneath it.

    A host path (no root) is one the plan names on purpose and is looked up as given.
    """
    assert spec.bind is not None
    k = ctx.backend
    flags = OpenTreeFlag.CLONE | OpenTreeFlag.CLOEXEC
    if spec.bind.recursive:
        flags |= OpenTreeFlag.RECURSIVE
    ref = spec.bind.source
    if ref.root is None:
        clone: Fd = k.open_tree(AT_FDCWD, ref.path, flags)
        return clone
    root = rootset.get(ref.root)
    if root is None:
        raise RootError(f"mount {spec.name!r}: bind source root {ref.root!r} is not open")
    src = resolve(k, root, ref.path, O_PATH_ANY)
    try:
        clone = k.open_tree(src.fileno(), "", flags | OpenTreeFlag.EMPTY_PATH)
        return clone
    finally:
        src.close()


def bind_source_path(spec: MountSpec, rootset: RootSet) -> str:
    """The source's path in our mount namespace (for the live table; never handed to the kernel to act on)."""
    assert spec.bind is not None
    ref = spec.bind.source
    if ref.root is None:
        return ref.path
    return f"{rootset[ref.root].identity.path.rstrip('/')}/{ref.path}"
