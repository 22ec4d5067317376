"""Loader test fixtures: a fixed kernel filesystem list so diagnostics do not depend on the host."""

from __future__ import annotations

import pytest

from mountplan.loader import _semantic

#: What the loader tests pretend /proc/filesystems lists.
KNOWN_FILESYSTEMS = frozenset(
    {"tmpfs", "proc", "sysfs", "devpts", "mqueue", "ramfs", "overlay", "cgroup2", "ext4", "fuse"}
)


@pytest.fixture
def fixed_kernel(monkeypatch: pytest.MonkeyPatch) -> frozenset[str]:
    """Make the loader see KNOWN_FILESYSTEMS as the kernel's types, and no modules."""
    monkeypatch.setattr(_semantic, "kernel_filesystems", lambda: KNOWN_FILESYSTEMS)
    monkeypatch.setattr(_semantic, "_module_filesystems", lambda: frozenset())
    return KNOWN_FILESYSTEMS
