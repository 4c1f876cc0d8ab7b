"""Print pyproject.toml's dependencies (and those of the extras named) one per line.

The Dockerfile installs these in a layer of their own before it copies the source, so a code
change does not reinstall every dependency:  python requirements.py pyproject.toml gpu
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject_path: str, extras: list[str]) -> list[str]:
    with open(pyproject_path, "rb") as file:
        project = tomllib.load(file)["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject_path}: {', '.join(unknown)}")
    return [*project.get("dependencies", []), *(dep for extra in extras for dep in optional[extra])]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
