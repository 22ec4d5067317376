"""Collection-time facts about the emulated kernel profile (scripts/emulate-kernel), for skip marks.

Decided from the profile, not from probing here: the test process may lack the
capability its sandbox will have, and a skip raised inside the sandbox does not
travel back.
"""

from __future__ import annotations

import pytest

from mountplan._kernel.emulation import active_profile
from mountplan._kernel.features import REQUIRED

_PROFILE = active_profile()

#: The engine refuses before any change under this profile (a required syscall is taken away).
ENGINE_REFUSES = _PROFILE is not None and _PROFILE.takes_away(REQUIRED)

needs_engine = pytest.mark.skipif(
    ENGINE_REFUSES, reason=f"the emulated kernel profile {_PROFILE.name if _PROFILE else ''} lacks a required syscall: apply refuses"
)
needs_unique_ids = pytest.mark.skipif(
    _PROFILE is not None and not _PROFILE.has_unique_mount_ids,
    reason="needs unique mount ids (Linux 6.8+): a 32-bit id elsewhere proves nothing",
)
needs_mount_setattr = pytest.mark.skipif(
    _PROFILE is not None and _PROFILE.takes_away(("mount_setattr",)),
    reason="attributes on a recursive bind's submounts need mount_setattr (Linux 5.12)",
)
