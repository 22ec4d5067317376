"""An idmapped bind's chain: userns before open_tree, the mapping set with the attributes before move_mount."""

from __future__ import annotations

import re
from pathlib import Path

from mountplan.compiler import StepKind, compile_apply
from mountplan.loader import load_text

DOC = Path(__file__).parents[2] / "docs" / "idmap.md"


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced block, in order."""
    blocks: list[tuple[str, str]] = []
    info: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body) + "\n"))
                info = None
        elif info is not None:
            body.append(line)
    return blocks


def _doc_plan_and_transcript() -> tuple[str, list[str]]:
    blocks = _fenced_blocks(DOC.read_text())
    (plan,) = [body for info, body in blocks if info == "yaml"]
    shown = next(body for info, body in blocks if info == "" and "userns" in body)
    return plan, [line for line in shown.splitlines() if line.strip() != "..."]


def test_docs_transcript_is_what_the_compiler_makes() -> None:
    """The `mountplan steps` lines docs/idmap.md shows are the example plan's real transcript."""
    plan, shown = _doc_plan_and_transcript()
    transcript = list(compile_apply(load_text(plan, filename="idmap.md")).transcript())
    assert shown == transcript[1 : 1 + len(shown)]


def test_userns_comes_first_and_the_mapping_is_set_before_attaching() -> None:
    """userns, open_tree, mount_setattr (idmap), then the usual tail ending in move_mount."""
    plan, _ = _doc_plan_and_transcript()
    kinds = [s.kind for s in compile_apply(load_text(plan, filename="idmap.md")).chain("cache")]
    assert kinds[:3] == [StepKind.USERNS, StepKind.OPEN_TREE, StepKind.SET_ATTR]
    assert kinds.index(StepKind.SET_ATTR) < kinds.index(StepKind.MOVE_MOUNT)


def test_plain_bind_chain_is_unchanged() -> None:
    """Without idmap a bind compiles exactly as before: no userns step, no idmap argument."""
    plan, _ = _doc_plan_and_transcript()
    plain = re.sub(r"      idmap:\n(        .*\n)+", "", plan)
    steps = compile_apply(load_text(plain, filename="plain.yaml")).chain("cache")
    assert [s.id for s in steps][:2] == ["cache#00:open_tree", "cache#01:mount_setattr"]
    assert all(s.kind is not StepKind.USERNS and "idmap" not in dict(s.args) for s in steps)
