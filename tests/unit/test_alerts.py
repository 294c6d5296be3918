"""The alert rules (deploy/alerts.yml): valid, unit-tested by promtool, on the worker's
real metric names, and loaded by the compose Prometheus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy import COMPOSE, PROMETHEUS, metric_names, mounts, queryable_names

DEPLOY = PROMETHEUS.parent
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts-test.yml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed"
)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    # The unit tests pin the thresholds: a rule that waits for a 200 ms p99 instead of
    # 50 ms no longer fires where the tests say it must.
    moved = ALERTS.read_text().replace("> 0.05", "> 0.2")
    assert moved != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(moved)
    (tmp_path / "alerts-test.yml").write_text(ALERT_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts-test.yml"))
    assert result.returncode != 0
    assert "StreamrecLatencyP99High" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts == firing, "every alert fires in a unit test"
    assert alerts == quiet, "every alert stays quiet in a unit test"


def test_the_rules_query_only_what_the_worker_exports() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exported = queryable_names() | recorded
    for rule in rules():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule.get('alert') or rule['record']} queries {unknown}"


def test_the_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == [ALERTS.name]
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounted = mounts(services["prometheus"])
    # rule_files is relative to the config file, which is mounted in /etc/prometheus.
    assert mounted["/etc/prometheus/prometheus.yml"] == str(PROMETHEUS)
    assert mounted["/etc/prometheus/alerts.yml"] == str(ALERTS)
