"""Package metadata: one version, an SPDX license with its file, links that work on the package index.

Building the sdist and wheel is slow, so .ci/run does it (`python -m build`, no
warnings allowed, then `twine check`); these tests check the installed metadata
and the sources it is made from.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import tomllib

import mountplan

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_has_one_source() -> None:
    """The installed version is mountplan.__version__, which pyproject.toml reads instead of repeating it."""
    assert mountplan.__version__ == importlib.metadata.version("mountplan")
    assert "version" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mountplan.__version__"}


def test_cli_version_is_the_package_version() -> None:
    """`mountplan --version` prints the same version."""
    result = subprocess.run(
        [sys.executable, "-m", "mountplan", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == f"mountplan {mountplan.__version__}"


def test_license_is_an_spdx_expression_with_its_file() -> None:
    """License-Expression is Apache-2.0 and the Apache 2.0 text ships as a license file."""
    metadata = importlib.metadata.metadata("mountplan")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]


def test_project_urls_and_classifiers_are_set() -> None:
    """The index page gets links and trove classifiers, Linux only."""
    metadata = importlib.metadata.metadata("mountplan")
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= urls.keys()
    assert all(url.startswith("https://") for url in urls.values())
    assert "Operating System :: POSIX :: Linux" in (metadata.get_all("Classifier") or [])


def test_readme_links_are_absolute() -> None:
    """README links work on the package index: none points at a path only the repository has."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links
    homepage = PYPROJECT["project"]["urls"]["Homepage"]
    for link in links:
        assert link.startswith(homepage + "/"), link
        relative = link.removeprefix(homepage + "/blob/main/")
        assert (REPO / relative).exists(), link
