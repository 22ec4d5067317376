"""A bind's idmap in the plan: what the loader builds (the rejected spellings are in the corpus)."""

from __future__ import annotations

from mountplan.loader import check
from mountplan.model import IdMapping, IdRange

_PLAN = """\
version: 1
name: idmap
roots:
  r: {{}}
mounts:
  - name: cache
    target: cache
    bind:
      path: /srv/cache
      idmap: {idmap}
"""


def _idmap(text: str) -> IdMapping | None:
    plan, diagnostics = check(_PLAN.format(idmap=text), filename="idmap.yaml")
    assert plan is not None, diagnostics
    bind = plan.mounts[0].bind
    assert bind is not None
    return bind.idmap


def test_gids_default_to_the_uid_lines() -> None:
    """Only `uids` given: the gid map is the same lines."""
    ranges = (IdRange(0, 100000, 65536),)
    assert _idmap("{uids: [[0, 100000, 65536]]}") == IdMapping(ranges, ranges)


def test_uids_and_gids_are_kept_in_plan_order() -> None:
    """Separate maps, several lines each, exactly as written."""
    got = _idmap("{uids: [[1000, 0, 1], [0, 1, 1000]], gids: [[100, 0, 1]]}")
    assert got == IdMapping((IdRange(1000, 0, 1), IdRange(0, 1, 1000)), (IdRange(100, 0, 1),))


def test_existing_user_namespace_by_path_or_fd() -> None:
    """`userns` takes an absolute namespace path or fd:N and no maps."""
    assert _idmap("{userns: /proc/1234/ns/user}") == IdMapping(userns="/proc/1234/ns/user")
    assert _idmap("{userns: 'fd:7'}") == IdMapping(userns="fd:7")


def test_adjacent_ranges_do_not_overlap() -> None:
    """Ranges that touch (0-999 and 1000) are accepted, as the kernel accepts them."""
    got = _idmap("{uids: [[0, 1, 1000], [1000, 0, 1]]}")
    assert got is not None and len(got.uids) == 2


def test_largest_valid_id_is_accepted() -> None:
    """4294967294 is the largest id; a line ending exactly there is valid."""
    got = _idmap("{uids: [[4294967294, 0, 1]]}")
    assert got is not None and got.uids == (IdRange(4294967294, 0, 1),)
