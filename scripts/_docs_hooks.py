"""mkdocs hooks (mkdocs.yml ``hooks:``): the home page, pictures drawn at build time, a catch-all nav.

- ``index.md`` is README.md, its links to ``.../blob/main/docs/X.md`` made relative.
- A fence of kind ``mountplan-picture`` holds one ``mountplan ...`` command that
  prints Graphviz dot (``mountplan graph PLAN``); a ``dot-picture`` fence holds dot
  source. Each becomes an SVG that Graphviz draws while the site is built, so a
  picture cannot drift from the tool; on GitHub the fence shows what to run.
- A ``mountplan-output`` fence holds one ``mountplan ...`` command: it runs at build
  time (each ``--root NAME=PATH`` given a fresh empty directory, a private
  ``--state-dir``) and its output, after the command, replaces the fence.
- A ``mountplan-session`` fence holds several such commands, one a line, that may
  mount (``apply``): they run in order in one throwaway private mount namespace
  (util-linux ``unshare``; a user namespace too when not root), sharing the roots
  and the state directory, and the page shows each command and its output.
- Every ``docs/*.md`` page the nav does not list is added under "More".

Whatever fails (a command's non-zero exit, Graphviz missing or refusing the dot)
fails the build. Only a session mounts, inside its own namespace, which takes its
mounts along when it exits: the build never changes the host's mount table.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
README_DOCS_LINK = re.compile(r"\(https://github\.com/mountplan/mountplan/blob/main/docs/([\w.-]+\.md)(#[\w-]+)?\)")
FENCE = re.compile(
    r"^```(mountplan-picture|dot-picture|mountplan-output|mountplan-session)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)
#: Subcommands that read the state directory: given a private one, so the page
#: never shows (or depends on) this machine's state.
READS_STATE = {"plan", "diff", "status"}

#: Pictures drawn during on_files, by fence source: (site path, alt text).
_pictures: dict[str, tuple[str, str]] = {}


def on_config(config: Any) -> Any:
    """Add every docs/*.md page that the nav leaves out, under "More"."""
    listed = set(_nav_pages(config["nav"] or []))
    docs = Path(config["docs_dir"])
    extra = sorted(p.name for p in docs.glob("*.md") if p.name not in listed and p.name != "index.md")
    if extra:
        config["nav"] = [*config["nav"], {"More": extra}]
    return config


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    return []


def on_files(files: Files, config: Any) -> Files:
    """Add the home page and every picture the pages ask for."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    index = README_DOCS_LINK.sub(lambda m: f"({m.group(1)}{m.group(2) or ''})", readme)
    files.append(File.generated(config, "index.md", content=index))
    _pictures.clear()
    for page in sorted(Path(config["docs_dir"]).rglob("*.md")):
        for kind, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if kind not in ("mountplan-picture", "dot-picture") or body in _pictures:
                continue
            dot = _run_mountplan(body) if kind == "mountplan-picture" else body
            name = f"pictures/{page.stem}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.svg"
            files.append(File.generated(config, name, content=_draw(dot, page.name)))
            _pictures[body] = (name, body.strip() if kind == "mountplan-picture" else "diagram")
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace each fence with its picture or with the command's output."""
    depth = page.file.src_uri.count("/")
    prefix = "../" * depth

    def replace(match: re.Match[str]) -> str:
        kind, body = match.group(1), match.group(2)
        if kind == "mountplan-output":
            output = _run_mountplan(body)
            return f"```console\n$ {body.strip()}\n{output.rstrip()}\n```"
        if kind == "mountplan-session":
            lines = [line.strip() for line in body.splitlines() if line.strip()]
            shown = (f"$ {line}\n{output.rstrip()}" for line, output in zip(lines, _run_session(lines), strict=True))
            return "```console\n" + "\n\n".join(shown) + "\n```"
        name, alt = _pictures[body]
        caption = f"<figcaption>drawn by <code>{html.escape(alt)}</code></figcaption>\n" if kind == "mountplan-picture" else ""
        # The picture links to itself: a wide graph can be opened at full size.
        image = f"[![{html.escape(alt)}]({prefix}{name})]({prefix}{name})"
        return f'<figure class="mp-picture" markdown>\n{image}\n{caption}</figure>'

    return FENCE.sub(replace, markdown)


def _run_mountplan(body: str) -> str:
    """Run the one ``mountplan ...`` command in ``body`` from the repository root; its stdout."""
    return _run([body.strip()], namespace=False)[0]


def _run_session(lines: list[str]) -> list[str]:
    """Run ``mountplan ...`` commands in one throwaway mount namespace; each one's stdout."""
    return _run(lines, namespace=True)


#: Between two commands' outputs in a session's stdout.
_SEPARATOR = "@@mountplan-docs-next-command@@"


def _run(commands: list[str], *, namespace: bool) -> list[str]:
    """Run the commands in order, sharing fresh roots and a state directory; their stdouts.

    The page shows realistic root paths; each ``--root NAME=PATH`` gets a fresh
    empty directory instead, and the output says PATH again.
    """
    with tempfile.TemporaryDirectory(prefix="mountplan-docs-") as tmp:
        shown: dict[str, str] = {}
        scripts: list[list[str]] = []
        for command in commands:
            argv = shlex.split(command)
            if len(argv) < 2 or argv[0] != "mountplan":
                raise PluginError(f"docs: a mountplan fence holds `mountplan ...` commands, not {command!r}")
            args = argv[1:]
            for index, arg in enumerate(args[:-1]):
                if arg == "--root" and "=" in args[index + 1]:
                    name, path = args[index + 1].split("=", 1)
                    fresh = Path(tmp) / "roots" / name
                    fresh.mkdir(parents=True, exist_ok=True)
                    args[index + 1] = f"{name}={fresh}"
                    shown[str(fresh)] = path
            if args[0] in READS_STATE | {"apply", "destroy"}:
                args += ["--state-dir", str(Path(tmp) / "state")]
            scripts.append([sys.executable, "-m", "mountplan", *args])
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
        env.pop("FORCE_COLOR", None)
        if namespace:
            # One shell runs every command, so they share the namespace; a marker
            # line between them splits the output again.
            script = " && ".join(f"{shlex.join(argv)} && echo {_SEPARATOR}" for argv in scripts)
            user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
            argv = ["unshare", *user, "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", script]
        else:
            argv = scripts[0]
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PluginError(f"docs: `{' && '.join(commands)}` exited {result.returncode}: {result.stderr.strip()}")
    output = result.stdout
    for fresh_path, path in shown.items():
        output = output.replace(fresh_path, path)
    if not namespace:
        return [output]
    *outputs, rest = output.split(_SEPARATOR + "\n")
    if rest or len(outputs) != len(commands):
        raise PluginError(f"docs: cannot split the output of `{' && '.join(commands)}`: {output!r}")
    return outputs


def _draw(dot: str, page: str) -> str:
    """SVG drawn by Graphviz from ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise PluginError("docs: Graphviz `dot` is not installed (apt-get install graphviz)")
    result = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, check=False)
    if result.returncode != 0 or result.stderr.strip():
        raise PluginError(f"docs: dot failed on a picture in {page}: {result.stderr.strip()}")
    return result.stdout
