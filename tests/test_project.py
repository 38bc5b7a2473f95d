"""Project basics a user or a packager relies on: version, licence, changelog, typing marker,
the dependency ranges and the interpreters CI runs them on."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import ava_keyframes
from ava_keyframes.cli import main as keyframes_main
from detector.cli import main as detector_main

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_comes_from_the_package_metadata():
    assert ava_keyframes.__version__ == version("ava-keyframes")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", ava_keyframes.__version__)


@pytest.mark.parametrize("main, prog", [(keyframes_main, "ava-keyframes"),
                                        (detector_main, "ava-detector")])
def test_both_tools_print_their_version(main, prog, capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{prog} {ava_keyframes.__version__}"


def test_licence_file_is_the_apache_text_pyproject_names():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_changelog_has_a_section_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(PYPROJECT['project']['version'])}\b", changelog, re.M)


@pytest.mark.parametrize("package", ["ava_keyframes", "detector"])
def test_both_packages_are_marked_typed_and_ship_the_marker(package):
    assert (ROOT / package / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_dataset_card_installs_from_a_clone_not_pypi():
    card = (ROOT / "ava_keyframes" / "README.md").read_text()
    assert "pip install ava-keyframes" not in card


def test_ci_runs_the_fast_suite_on_every_claimed_python():
    """pyproject's requires-python, the Makefile's interpreters and the README agree."""
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)",
                             PYPROJECT["project"]["requires-python"]).groups()
    claimed = {f"3.{minor}" for minor in range(int(low), int(high))}
    makefile = (ROOT / "Makefile").read_text()
    default = re.search(r"^PYTHON \?= python(3\.\d+)$", makefile, re.M).group(1)
    others = set(re.search(r"^OTHER_PYTHONS := (.*)$", makefile, re.M).group(1).split())
    assert {default} | others == claimed
    assert f"`python3` ({min(claimed)}-{max(claimed)}" in (ROOT / "README.md").read_text()


def test_find_python_fails_loudly_for_a_missing_interpreter():
    result = subprocess.run([str(ROOT / ".ci" / "find-python"), "3.99"],  # noqa: S603
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "python3.99" in result.stderr and "not installed" in result.stderr


def test_lowest_constraints_stay_inside_the_declared_ranges():
    """`.ci/constraints-lowest.txt` pins each package to the bottom of its pyproject range,
    so raising a lower bound without re-testing it fails here."""
    pins = dict(line.split("==") for line in (ROOT / ".ci" / "constraints-lowest.txt")
                .read_text().splitlines() if line and not line.startswith("#"))
    ranges = {re.match(r"[\w-]+", dep).group(0): dep
              for dep in PYPROJECT["project"]["dependencies"]}
    for name, pinned in pins.items():
        lowest = re.search(r">=([\d.]+)", ranges[name]).group(1)
        assert pinned.startswith(lowest), (name, pinned, ranges[name])
