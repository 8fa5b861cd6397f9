"""The Dockerfile builds: every COPY source is in the build context after .dockerignore.

There is no Docker daemon here, so this checks what a build would fail on first: a COPY of a
file the context does not hold (e.g. README.md, which pyproject.toml's `readme` needs for
`pip wheel`, excluded by .dockerignore). .dockerignore is applied with Docker's rules: patterns
are relative to the context root, `*` and `?` stay within one path element, `**` spans any
number, `!` re-includes, the last matching line wins, and a path is excluded when it or one of
its parent directories is.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pattern(line: str) -> re.Pattern[str]:
    parts = []
    i = 0
    text = line.strip("/")
    while i < len(text):
        if text.startswith("**", i):
            parts.append(".*")
            i += 2
            if text.startswith("/", i):
                parts[-1] = "(?:.*/)?"
                i += 1
        elif text[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif text[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(text[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def dockerignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, pattern) per line of .dockerignore, in order."""
    rules = []
    path = context / ".dockerignore"
    for raw in path.read_text().splitlines() if path.is_file() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, _pattern(line.lstrip("!").strip())))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Is `relative` (posix, from the context root) left out of the build context?"""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.match(c) for c in candidates):
            excluded = not negated
    return excluded


def copy_sources(dockerfile: Path) -> list[str]:
    """Sources of every COPY/ADD from the build context (not `--from=` another stage)."""
    sources: list[str] = []
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = words[1:]
        if any(a.startswith("--from") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        sources.extend(args[:-1])  # the last one is the destination
    return sources


def test_every_copy_source_is_in_the_build_context() -> None:
    rules = dockerignore_rules(ROOT)
    sources = copy_sources(ROOT / "Dockerfile")
    assert {"pyproject.toml", "README.md", "app", "training", "migrations"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, rules), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            kept = [
                p
                for p in path.rglob("*")
                if p.is_file() and not ignored(p.relative_to(ROOT).as_posix(), rules)
            ]
            assert kept, f"COPY {source}: every file in it is excluded by .dockerignore"


def test_what_the_package_build_needs_is_copied() -> None:
    """pyproject's readme and the packages it finds are copied before `pip wheel`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = set(copy_sources(ROOT / "Dockerfile"))
    assert project["project"]["readme"] in sources
    for package in ("app", "training"):
        assert package in sources and (ROOT / package / "__init__.py").is_file()
    rules = dockerignore_rules(ROOT)
    for needed in ("app/__init__.py", "training/__init__.py", "migrations/env.py", "README.md"):
        assert not ignored(needed, rules), needed


def test_the_matcher_follows_dockerignore_rules() -> None:
    rules = [(False, _pattern("data")), (False, _pattern("**/*.pyc")), (False, _pattern("*.md"))]
    rules.append((True, _pattern("README.md")))
    assert ignored("data/x.csv", rules) and not ignored("training/data/x.py", rules)
    assert ignored("app/a/b.pyc", rules) and ignored("b.pyc", rules)
    assert ignored("NOTES.md", rules) and not ignored("README.md", rules)
    assert not ignored("docs/x.md", rules)  # `*` does not cross a slash
