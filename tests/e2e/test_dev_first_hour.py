"""`tollgate dev` as a newcomer meets it (issue 18): a model whose processor does not import
is reported unavailable (banner, GET /models, 503 on POST /jobs) instead of taking jobs no
worker runs; the console has one log format; JSON answers end with a newline; /metrics has
one charset and answers HEAD; the banner's `export` line sets what the docs' examples read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from tests.api.test_cli import NEGATIVE_MODELS
from tests.e2e.devserver import tollgate_dev

# The console's one format (service.logs): `HH:MM:SS LEVEL   logger: message`.
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")


def test_dev_reports_a_model_it_cannot_run_and_keeps_one_console_format(tmp_path: Path
                                                                      ) -> None:
    models = tmp_path / "models.toml"
    models.write_text(NEGATIVE_MODELS.split("[models.edges]")[0])
    with tollgate_dev(tmp_path, extra_env={"TOLLGATE_MODELS": str(models)}) as dev:
        token = dev.printed("token")
        auth = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{dev.url}/models", headers=auth)
        assert listed.content.endswith(b"}\n")  # curl output does not run on
        by_name = {model["name"]: model for model in listed.json()["items"]}
        assert by_name["thumbnail"]["available"] is True
        assert by_name["negative"]["available"] is False
        assert "PYTHONPATH" in by_name["negative"]["unavailable_reason"]
        png = {"name": "a.png", "content_type": "image/png", "size": 10}
        refused = httpx.post(f"{dev.url}/jobs", headers=auth,
                             json={"model": "negative", "items": [png]})
        assert refused.status_code == 503 and refused.json()["code"] == "model_unavailable"
        assert refused.content.endswith(b"}\n")
        assert httpx.post(f"{dev.url}/jobs", headers=auth,
                          json={"items": [png]}).status_code == 201

        metrics = httpx.get(f"{dev.url}/metrics")
        assert metrics.headers["content-type"].count("charset") == 1, metrics.headers
        head = httpx.head(f"{dev.url}/metrics")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == metrics.headers["content-type"]

        # The banner's export line, in a fresh shell, is all the docs' examples need.
        export = re.search(r"^  (export TG_URL=.*)$", dev.log(), flags=re.M)
        assert export, dev.log()
        me = subprocess.run(["bash", "-c", export[1] + '\ncurl -s -H "Authorization: Bearer '
                             '$TG_TOKEN" $TG_URL/me'], capture_output=True, text=True,
                            timeout=30, env=dev.env)
        assert '"user_id":"dev-user"' in me.stdout, me.stdout + me.stderr
        log = dev.log()
    assert re.search(r"^  UNAVAILABLE model 'negative': .*PYTHONPATH", log, flags=re.M), log
    banner_end = log.index("tollgate inspect user dev-user")
    for line in log[banner_end:].splitlines()[1:]:
        # Every line after the banner: a log line in the one format, or the flusher's own
        # start/stop line, each on a line of its own.
        assert LOG_LINE.match(line) or re.fullmatch(r"flusher: [^:]*\d+s", line) or \
            line.startswith("flusher: stopped"), (line, log[-3000:])
