"""The monitoring profile: Prometheus's scrape config, Grafana's provisioning and the tollgate
dashboard, whose PromQL is read by promql-parser and checked against what /metrics exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from tests.deploy.artefacts import (
    HISTOGRAMS,
    METRIC_NAMES,
    ROOT,
    bind_mounts,
    command_args,
    compose,
    services,
)

# Grafana's global variables, replaced by Grafana before Prometheus sees the query: any
# duration stands in for them here.
GRAFANA_DURATIONS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}


def test_prometheus_scrapes_the_api() -> None:
    prometheus = services()["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in command_args(prometheus)
                       if a.startswith("--config.file="))
    assert mounts["./deploy/prometheus/prometheus.yml"] == config_path
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {(job.get("metrics_path", "/metrics"), target)
               for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    assert targets == {("/metrics", "api:8000")}
    api_args = command_args(services()["api"])
    assert api_args[api_args.index("--port") + 1] == "8000"


def test_prometheus_sends_the_metrics_token_the_api_asks_for() -> None:
    """/metrics answers only with TOLLGATE_METRICS_TOKEN (or on loopback, which the
    Prometheus container is not): the token reaches Prometheus as a Compose secret."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "/run/secrets/metrics_token"}
    prometheus = services()["prometheus"]
    assert [secret["source"] for secret in prometheus["secrets"]] == ["metrics_token"]
    assert compose()["secrets"]["metrics_token"]["environment"] == "TOLLGATE_METRICS_TOKEN"
    assert "TOLLGATE_METRICS_TOKEN" in services()["api"]["environment"]


def test_grafana_is_provisioned_with_prometheus_and_the_tollgate_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "tollgate.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/tollgate.json"
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "tollgate.json").read_text())
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a dashboard's PromQL expression uses."""
    def duration(match: re.Match[str]) -> str:
        name = match["name"] or match["braced"]
        assert name in GRAFANA_DURATIONS, f"unknown Grafana variable {match[0]!r} in {expr}"
        return GRAFANA_DURATIONS[name]

    query = re.sub(r"\$(?:(?P<name>\w+)|\{(?P<braced>\w+)\})", duration, expr)
    metrics: set[str] = set()
    labels: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [*node.matchers.matchers,
                        *(m for group in node.matchers.or_matchers for m in group)]
            metrics.update({node.name} if node.name else
                           {m.value for m in matchers if m.name == "__name__"})
            labels.update(m.name for m in matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier \
                and node.modifier.matching:
            labels.update(node.modifier.matching.labels)

    promql_parser.walk(promql_parser.parse(query), visit)
    return metrics, labels


def metric_base(name: str) -> str | None:
    if name in METRIC_NAMES:
        return name
    for histogram in HISTOGRAMS:
        if name in (f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"):
            return histogram
    return None


def test_promql_names_finds_metrics_and_labels() -> None:
    assert promql_names('histogram_quantile(0.9, sum by (le, path) '
                        '(rate(x_bucket{status_code=~"5.."}[$__rate_interval])))') == (
        {"x_bucket"}, {"le", "path", "status_code"})
    assert promql_names('sum(a{k="v"}) / on (q) '
                        'sum by (q) (increase(b[${__range}] offset 5m))') == (
        {"a", "b"}, {"k", "q"})
    with pytest.raises(AssertionError, match="unknown Grafana variable"):
        promql_names("rate(a[$custom])")
    with pytest.raises(ValueError):
        promql_names("sum(rate(a[1m])")  # unbalanced


def test_dashboard_uses_only_exported_metrics_and_their_labels() -> None:
    used: set[str] = set()
    exprs = [(panel["title"], target["expr"]) for panel in dashboard_panels()
             for target in panel.get("targets", [])]
    assert exprs
    for title, expr in exprs:
        names, labels = promql_names(expr)
        assert names, f"{title}: {expr} reads no metric"
        bases = {name: metric_base(name) for name in names}
        assert None not in bases.values(), f"{title}: unknown metric in {expr}"
        allowed = {label for base in bases.values() if base for label in METRIC_NAMES[base]}
        if any(name.endswith("_bucket") for name in names):
            allowed.add("le")
        assert labels <= allowed, f"{title}: labels {labels - allowed} in {expr}"
        used |= {base for base in bases.values() if base}
    # Throughput, queue depth, credits, failures, flush lag and HTTP, as issue 13 asks.
    assert {"tollgate_jobs_total", "tollgate_items_total", "tollgate_queue_depth",
            "tollgate_credits_total", "tollgate_flush_failures_total",
            "tollgate_leases_expired_total", "tollgate_webhook_deliveries_total",
            "tollgate_flush_lag_seconds", "tollgate_requests_total"} <= used
    assert any('tollgate_jobs_total{status="failed"}' in expr for _, expr in exprs)


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "tollgate" and board["title"] and isinstance(board["panels"], list)
    ids = [panel["id"] for panel in dashboard_panels()]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert panel["type"] and panel["title"] and grid["x"] + grid["w"] <= 24, panel
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
