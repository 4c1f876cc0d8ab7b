"""Writes the client's two generated modules, so that each thing is written once:

- service/client/sync.py, the blocking client, from aio.py (the way httpcore and psycopg
  keep theirs): `async`/`await` dropped, httpx's Async names swapped for the blocking ones,
  io_async (pausing, uploading at once) for io_sync;
- service/client/codes.py, every problem code of service/errors.py with its status and
  title: the client may import nothing of the server, so it gets a copy.

    python -m tests.client.regenerate          # after editing aio.py or service/errors.py

tests/client/test_generated.py fails while either file differs from what this writes.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

from service.errors import error_table

CLIENT = Path(__file__).resolve().parents[2] / "service" / "client"
COMMAND = "python -m tests.client.regenerate"

SYNC_DOCSTRING = f'''"""The blocking client, `Tollgate(url, token)`: aio.py's calls, not awaited.

Generated from aio.py by `{COMMAND}`: edit aio.py, not this file.
"""
'''

# Whole names of aio.py and their blocking counterparts (httpx's and the client's own).
NAMES = {
    "AsyncTollgate": "Tollgate",
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncIterator": "Iterator",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    "io_async": "io_sync",
}
# Names that only make sense awaited: one left in the translation fails it.
ASYNC_NAME = re.compile(r"async|await|asyncio|Async\w*|a(read|close|iter_\w+|send|write)")
SYNTAX = [
    (re.compile(r"\basync (def|with|for) "), r"\1 "),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"  # noqa: ASYNC\d+"), ""),  # flake8-async's rules have nothing to say there
    # An async generator cannot `yield from`; a blocking one should.
    (re.compile(r"^( *)for (\w+) in (.+):\n *yield \2$", re.M), r"\1yield from \3"),
]


def unasync(source: str) -> str:
    """sync.py's text from aio.py's: its module docstring replaced, the rest translated."""
    if not source.startswith('"""'):
        raise ValueError("aio.py must start with its docstring")
    body = source[source.index('"""', 3) + 4:]
    body = re.sub(r"\b(" + "|".join(NAMES) + r")\b", lambda name: NAMES[name[1]], body)
    for pattern, replacement in SYNTAX:
        body = pattern.sub(replacement, body)
    tokens = tokenize.generate_tokens(io.StringIO(body).readline)
    leftover = [token.string for token in tokens
                if token.type == tokenize.NAME and ASYNC_NAME.fullmatch(token.string)]
    if leftover:
        raise ValueError(f"aio.py: no blocking counterpart of {leftover}: add them to NAMES")
    return SYNC_DOCSTRING + body


def codes_module() -> str:
    lines = [
        '"""Every problem code of the API, with its HTTP status and title. Generated from',
        f"service/errors.py by `{COMMAND}`: do not edit (the client may",
        'import nothing of the server, so it keeps this copy)."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import NamedTuple",
        "",
        "",
        "class Code(NamedTuple):",
        "    code: str",
        "    status: int",
        "    title: str",
        "",
        "",
    ]
    names = []
    for error in error_table():
        name = error.code.upper()
        fields = f"{json.dumps(error.code)}, {error.status}, {json.dumps(error.title)}"
        line = f"{name} = Code({fields})"
        if len(line) > 100:
            line = f"{name} = Code(\n    {fields})"
        lines.append(line)
        names.append(name)
    lines += ["", "CODES: dict[str, Code] = {code.code: code for code in ("]
    lines += [f"    {name}," for name in names]
    lines += [")}"]
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    """Each generated file and the text it must have."""
    return {
        CLIENT / "sync.py": unasync((CLIENT / "aio.py").read_text(encoding="utf-8")),
        CLIENT / "codes.py": codes_module(),
    }


def main() -> None:
    for path, text in generated().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
