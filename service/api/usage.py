"""The usage statement over HTTP: its query parameters, its JSON view and its CSV form.

The figures come from SQL alone (service.history.usage), so the statement answers the same
whichever Redis set-up runs beside it.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.params import QueryParameter
from msgspec import UNSET, UnsetType

from service.api.responses import JsonResponse
from service.errors import BadArgument
from service.history.usage import GroupBy, UsageStatement, usage_statement
from service.runtime import Runtime

MAX_DAYS = 366
CSV = "text/csv"
_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$(?!\n)"

FromDate = Annotated[str, QueryParameter(
    name="from", pattern=_DATE, min_length=10, max_length=10,
    description="The first UTC day of the statement (YYYY-MM-DD), included.")]
ToDate = Annotated[str, QueryParameter(
    name="to", pattern=_DATE, min_length=10, max_length=10,
    description=f"The last UTC day (YYYY-MM-DD), included; at most {MAX_DAYS} days in all.")]
GroupByParam = Annotated[GroupBy, QueryParameter(
    name="group_by", description="One row per UTC day, per model or per API key.")]

DESCRIPTION = (
    "What the finished jobs cost, from SQL: one row per UTC day (`period`), per model "
    "(`model`) or per API key (`key_id`, null for jobs made with a JWT), with `totals`. A "
    "job counts in the UTC day it finished, once the flusher moved it to SQL (seconds "
    f"after it ended). At most {MAX_DAYS} days. With `Accept: text/csv` the same rows come "
    "as CSV: a header line, then one line per row (no totals line).")


class UsageItem(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    jobs: int
    items: int  # the items of those jobs (succeeded, failed and never run)
    charged: int
    refunded: int
    period: str | UnsetType = UNSET  # group_by=day: YYYY-MM-DD (UTC)
    model: str | UnsetType | None = UNSET  # group_by=model: null for a job of version 1
    key_id: str | UnsetType | None = UNSET  # group_by=key: null for a job made with a JWT


class UsageTotals(msgspec.Struct, forbid_unknown_fields=True):
    jobs: int
    items: int
    charged: int
    refunded: int


class UsageView(msgspec.Struct, forbid_unknown_fields=True):
    items: list[UsageItem]
    totals: UsageTotals


def parse_range(first: str, last: str) -> tuple[date, date]:
    """The two days, checked: real dates, in order, at most MAX_DAYS days."""
    days = []
    for name, text in (("from", first), ("to", last)):
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise BadArgument(f"{name} must be a day written YYYY-MM-DD", parameter=name)
        try:
            days.append(date.fromisoformat(text))
        except ValueError:
            raise BadArgument(f"{name} is not a day of the calendar: {text}",
                              parameter=name) from None
    start, end = days
    if start > end:
        raise BadArgument("from is after to", parameter="from")
    if (end - start).days + 1 > MAX_DAYS:
        raise BadArgument(f"a statement covers at most {MAX_DAYS} days", parameter="to")
    return start, end


def view(statement: UsageStatement) -> UsageView:
    items = []
    for row in statement.rows:
        item = UsageItem(jobs=row.jobs, items=row.items, charged=row.charged,
                         refunded=row.refunded)
        if statement.group_by == "day":
            item.period = row.period or ""
        elif statement.group_by == "model":
            item.model = row.model
        else:
            item.key_id = row.key_id
        items.append(item)
    return UsageView(items=items, totals=UsageTotals(**statement.totals))


def to_csv(statement: UsageStatement) -> str:
    column = {"day": "period", "model": "model", "key": "key_id"}[statement.group_by]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow([column, "jobs", "items", "charged", "refunded"])
    for row in statement.rows:
        writer.writerow([getattr(row, column) or "", row.jobs, row.items, row.charged,
                         row.refunded])
    return out.getvalue()


def wants_csv(request: Request[Any, Any, Any]) -> bool:
    return request.accept.best_match(["application/json", CSV],
                                     default="application/json") == CSV


async def answer(request: Request[Any, Any, Any], rt: Runtime, user_id: str | None,
                 first: str, last: str, group_by: GroupBy) -> Response[Any]:
    start, end = parse_range(first, last)
    async with rt.sessions() as session:
        statement = await usage_statement(session, user_id, start, end, group_by)
    if wants_csv(request):
        name = f"usage-{start.isoformat()}-{end.isoformat()}-{group_by}.csv"
        return Response(to_csv(statement), media_type=f"{CSV}; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"',
                                 "Vary": "Accept"})
    return JsonResponse(view(statement), headers={"Vary": "Accept"})
