"""The code blocks of README.md and docs/*.md, as the example test runs them.

A block is a fenced block whose info string starts with `bash`, `sh` or `python`; `skip`
after the language keeps it from running (`bash skip`). A fenced block tagged `output` right
after a block (nothing but blank lines between) is what that block prints: compared line by
line, `...` standing for any text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = ("bash", "sh", "python")
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")


@dataclass(frozen=True, slots=True)
class Block:
    page: str
    line: int  # 1-based, of the opening fence
    language: str
    skip: bool
    code: str
    output: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced(text: str) -> list[tuple[int, str, str, int]]:
    """(line of the opening fence, info string, body, line of the closing fence)."""
    found = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            body.append(lines[end][indent:] if lines[end][:indent].strip() == "" else lines[end])
            end += 1
        found.append((index + 1, opening["info"].strip(), "\n".join(body), end + 1))
        index = end + 1
    return found


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    lines = text.splitlines()
    raw = fenced(text)
    found = []
    for number, (line, info, body, after) in enumerate(raw):
        words = info.split()
        if not words or words[0] not in RUNNABLE:
            continue
        output = None
        if number + 1 < len(raw):
            next_line, next_info, next_body, _ = raw[number + 1]
            between = lines[after:next_line - 1]
            if next_info == "output" and all(not gap.strip() for gap in between):
                output = next_body
        found.append(Block(str(path.relative_to(ROOT)), line, words[0], "skip" in words[1:],
                           body, output))
    return found


def matches(expected: str, actual: str) -> bool:
    """`actual` is `expected` with each `...` standing for any text (across lines too);
    trailing spaces and blank lines at either end do not count."""
    def clean(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip().splitlines())
    pattern = ".*?".join(re.escape(part) for part in clean(expected).split("..."))
    return re.fullmatch(pattern, clean(actual), flags=re.S) is not None


MARK = "@@tollgate-docs-block {}@@"


def page_script(runnable: list[Block]) -> str:
    """One bash script for a page's blocks, in order, as a reader runs them in one shell;
    a marker line before each block splits the output."""
    parts = ["set -eo pipefail"]
    for number, block in enumerate(runnable):
        parts.append(f"echo '{MARK.format(number)}'")
        if block.language == "python":
            delimiter = f"TOLLGATE_DOCS_PY_{number}"
            parts.append(f"cat > docs_block_{number}.py <<'{delimiter}'\n{block.code}\n"
                         f"{delimiter}\npython3 docs_block_{number}.py")
        else:
            parts.append(block.code)
    parts.append(f"echo '{MARK.format(len(runnable))}'")
    return "\n".join(parts) + "\n"


def split_output(stdout: str, count: int) -> list[str | None]:
    """Each block's stdout; None for a block that never ran (the script stopped before)."""
    outputs: list[str | None] = []
    for number in range(count):
        start, end = MARK.format(number), MARK.format(number + 1)
        if start not in stdout:
            outputs.append(None)
            continue
        rest = stdout.split(start + "\n", 1)[1]
        outputs.append(rest.split(end, 1)[0] if end in rest else rest)
    return outputs
