"""Print pip constraints that pin every direct dependency (and the test extra) to the lowest
version pyproject.toml allows, so CI proves the declared lower bounds really work."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def constraints(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]
    pins = []
    for requirement in requirements:
        match = LOWER_BOUND.match(requirement)
        if not match:
            raise SystemExit(f"{requirement!r} has no lower bound (name>=version): declare one")
        pins.append(f"{match[1]}=={match[3]}")
    return pins


if __name__ == "__main__":
    print("\n".join(constraints(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
