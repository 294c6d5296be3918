"""docker-compose.yml, the Dockerfile and deploy/ agree with the worker's own code.

Docker does not run in the unit tier, so these tests read the files. Each contract is a
plain `check_*` function over parsed documents; the tests run every check on the real
files, then on copies with one value drifted, to show the check can fail.
The worker's side comes from `stream.settings` and `stream.metrics`, never from copies.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from stream.cli import build_parser
from stream.metrics import WorkerMetrics, exported_names
from stream.settings import (
    ENV_PREFIX,
    Settings,
    SettingsError,
    describe,
    secret_file_variables,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamrec.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

LOOPBACK = "127.0.0.1"
SCRAPE_JOB = "streamrec-worker"
TOPIC_FIELDS = ("clicks_topic", "recommendations_topic", "dlq_topic")

Doc = dict[str, Any]


# ---- reading compose files -------------------------------------------------------------


def environment(service: Doc) -> dict[str, str]:
    """A service's environment as strings, from either compose syntax (map or list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def published_ports(service: Doc) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) per published port; ip "" means all."""
    ports = []
    for spec in service.get("ports") or []:
        if isinstance(spec, dict):
            ports.append((spec.get("host_ip", ""), int(spec["published"]), int(spec["target"])))
            continue
        parts = str(spec).split("/")[0].split(":")
        if len(parts) == 1:  # container port only: a random host port on every interface
            ports.append(("", 0, int(parts[0])))
        elif len(parts) == 2:
            ports.append(("", int(parts[0]), int(parts[1])))
        else:
            ports.append((":".join(parts[:-2]), int(parts[-2]), int(parts[-1])))
    return ports


def mounts(service: Doc) -> dict[str, str]:
    """Container path -> host path (resolved) or volume name, for each volume entry."""
    result = {}
    for spec in service.get("volumes") or []:
        if isinstance(spec, dict):
            source, target = spec["source"], spec["target"]
        else:
            source, target = str(spec).split(":")[:2]
        if source.startswith((".", "/")):
            source = str((COMPOSE.parent / source).resolve())
        result[target] = source
    return result


def command(service: Doc) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def streamrec_services(compose: Doc) -> dict[str, Doc]:
    """The services that run the streamrec image (worker, producer, ...)."""
    worker_image = compose["services"]["worker"]["image"]
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == worker_image
    }


SECRETS_DIR = "/run/secrets/"


def secret_files(compose: Doc) -> dict[str, Path]:
    """Top-level secret name -> the host file compose mounts for it, with a
    `${VAR:-default}` path read as its default (what a plain `docker compose up` uses)."""
    files = {}
    for name, spec in (compose.get("secrets") or {}).items():
        path = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(spec["file"]))
        files[name] = (COMPOSE.parent / path).resolve()
    return files


def service_secrets(service: Doc) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def settings_of(compose: Doc, name: str) -> Settings:
    """The Settings a service's container would start with: its environment, with each
    `<SECRET>_FILE` pointing at the host file of the secret mounted at that path."""
    service = compose["services"][name]
    env = environment(service)
    files = secret_files(compose)
    for variable in secret_file_variables():
        if variable in env:
            secret = env[variable].removeprefix(SECRETS_DIR)
            assert env[variable].startswith(SECRETS_DIR), f"{name}: {variable} not a secret"
            assert secret in service_secrets(service), f"{name}: secret {secret} not mounted"
            assert secret in files, f"{name}: secret {secret} is not defined"
            env[variable] = str(files[secret])
    return Settings.from_env(env)


def worker_settings(compose: Doc) -> Settings:
    return settings_of(compose, "worker")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def listeners(value: str) -> dict[str, str]:
    """Kafka listener list `NAME://host:port,...` as name -> host:port."""
    result = {}
    for entry in value.split(","):
        name, _, address = entry.strip().partition("://")
        result[name] = address
    return result


def provisioned(kind: str) -> Doc:
    """The one entry of deploy/grafana/provisioning/<kind>/ (a data source or a provider)."""
    (path,) = (GRAFANA / "provisioning" / kind).glob("*.yml")
    key = {"datasources": "datasources", "dashboards": "providers"}[kind]
    (entry,) = yaml.safe_load(path.read_text())[key]
    return entry


# ---- reading PromQL --------------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "absent",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "round", "ceil", "floor",
    "vector", "scalar", "time", "sort", "sort_desc", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time",
    "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers left once strings, label
    matchers, range selectors, grouping clauses and PromQL's own words are removed."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS


def queryable_names() -> set[str]:
    """Sample names Prometheus will hold for the worker, plus `up` from the scrape.

    `exported_names` also lists counter and histogram family names (without `_total`,
    `_bucket`...), which are never sample names: a query on them finds nothing.
    """
    metrics = WorkerMetrics()
    not_samples = {
        family.name
        for family in metrics.registry.collect()
        if family.type in ("counter", "histogram", "summary")
    }
    return (exported_names(metrics) - not_samples) | {"up"}


def panels(dashboard: Doc) -> list[Doc]:
    """Every panel, rows included, with collapsed rows' children, top to bottom."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return sorted(found, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


# ---- the contracts ---------------------------------------------------------------------


def check_streamrec_env(compose: Doc) -> None:
    known = {variable for variable, _default, _help in describe()} | set(secret_file_variables())
    for name, service in streamrec_services(compose).items():
        env = environment(service)
        unknown = {var for var in env if var.startswith(ENV_PREFIX)} - known
        assert not unknown, f"{name}: not settings in stream/settings.py: {sorted(unknown)}"
        settings_of(compose, name)  # raises SettingsError on a value the worker rejects


def check_commands(compose: Doc) -> None:
    for name, service in streamrec_services(compose).items():
        argv = command(service)
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(
                f"{name}: `streamrec {shlex.join(argv)}` is not a command"
            ) from None


def check_web_port(compose: Doc, prometheus: Doc) -> None:
    settings = worker_settings(compose)
    assert settings.web_host == "0.0.0.0", "Prometheus cannot reach a loopback-bound worker"
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for config in job["static_configs"] for t in config["targets"]]
    assert targets, f"scrape job {SCRAPE_JOB} has no targets"
    for target in targets:
        host, port = host_port(target)
        assert host in compose["services"], f"scrape target {target} is not a compose service"
        assert port == settings.web_port, f"scrape target {target} != web_port"
    container_ports = [c for _ip, _host, c in published_ports(compose["services"]["worker"])]
    assert container_ports == [settings.web_port], "worker publishes a port other than web_port"


def check_topics(compose: Doc) -> None:
    worker = worker_settings(compose)
    env = environment(compose["services"]["worker"])
    defaults = Settings()
    for name in TOPIC_FIELDS:
        assert ENV_PREFIX + name.upper() in env, f"worker: set {name} explicitly"
        assert getattr(worker, name) == getattr(defaults, name), f"worker {name} != default"
    for name, service in streamrec_services(compose).items():
        settings = settings_of(compose, name)
        for field in TOPIC_FIELDS:
            assert getattr(settings, field) == getattr(worker, field), f"{name}: {field}"
        topic = flag(command(service), "--topic")
        if topic is not None:
            assert topic == worker.clicks_topic, f"{name}: --topic {topic}"
        assert settings.bootstrap_servers == worker.bootstrap_servers, f"{name}: bootstrap"


def check_loopback(compose: Doc) -> None:
    for name, service in compose["services"].items():
        for ip, host, container in published_ports(service):
            assert ip == LOOPBACK, f"{name} publishes {host}:{container} beyond {LOOPBACK}"


def check_kafka(compose: Doc) -> None:
    kafka = compose["services"]["kafka"]
    env = environment(kafka)
    roles = set(env["KAFKA_PROCESS_ROLES"].replace(" ", "").split(","))
    assert {"broker", "controller"} <= roles, "kafka must run KRaft broker+controller"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID: not a UUID"
    bound = {name: host_port(addr)[1] for name, addr in listeners(env["KAFKA_LISTENERS"]).items()}
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    for address in worker_settings(compose).bootstrap_servers.split(","):
        names = [name for name, adv in advertised.items() if adv == address]
        assert names, f"worker bootstrap {address} is not an advertised listener"
        assert bound[names[0]] == host_port(address)[1], f"{address}: listener port differs"
    # The host listener: advertised as loopback, published on loopback, same port.
    published = {host: container for _ip, host, container in published_ports(kafka)}
    for name, address in advertised.items():
        host, port = host_port(address)
        if host in (LOOPBACK, "localhost"):
            assert published.get(port) == bound[name], f"{name} advertises unpublished {address}"


def check_dependencies(compose: Doc) -> None:
    services = compose["services"]
    worker = services["worker"]
    for needed in ("kafka", "redis"):
        assert worker["depends_on"][needed]["condition"] == "service_healthy", needed
        assert "healthcheck" in services[needed], f"{needed} has no healthcheck"
    redis = urlsplit(worker_settings(compose).redis_url)
    assert redis.hostname in services, f"redis_url host {redis.hostname} is not a service"
    assert "worker" in services["producer"]["depends_on"]


def check_redis_auth(compose: Doc) -> None:
    """Redis requires the password the worker logs in with, taken from one secret, and
    neither the password nor a URL holding it is written into the compose file."""
    redis = compose["services"]["redis"]
    script = " ".join(command(redis))
    assert "requirepass" in script, "redis runs without a password"
    (secret,) = re.findall(rf"{SECRETS_DIR}(\w+)", script) or [None]
    assert secret in service_secrets(redis), f"redis reads secret {secret}, not mounted"
    health = " ".join(redis["healthcheck"]["test"])
    assert f"{SECRETS_DIR}{secret}" in health and "PONG" in health, "healthcheck cannot log in"
    worker = worker_settings(compose)
    password = secret_files(compose)[secret].read_text().rstrip("\r\n")
    assert password, f"secret {secret} is empty"
    assert worker.redis_password == password, "worker logs in with another password"
    assert urlsplit(worker.redis_url).password is None, "password written into redis_url"
    assert password not in COMPOSE.read_text(), "the password is in docker-compose.yml"
    assert "local" in password, "the default password must say it is for local use only"


def check_grafana(compose: Doc) -> None:
    services = compose["services"]
    grafana = services["grafana"]
    mounted = mounts(grafana)
    provisioning = mounted.get("/etc/grafana/provisioning")
    assert provisioning == str(GRAFANA / "provisioning"), "provisioning is not mounted"
    datasource = provisioned("datasources")
    url = urlsplit(datasource["url"])
    assert url.hostname in services, f"datasource host {url.hostname} is not a service"
    assert url.port in [c for _ip, _h, c in published_ports(services[url.hostname])]
    assert datasource["isDefault"] is True
    dashboards_path = provisioned("dashboards")["options"]["path"]
    assert mounted.get(dashboards_path) == str(GRAFANA / "dashboards"), "dashboards not mounted"
    env = environment(grafana)
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert (GRAFANA / "dashboards" / Path(home).relative_to(dashboards_path)).is_file()
    assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer", "anonymous is read-only"
    prometheus_config = mounts(services["prometheus"]).get("/etc/prometheus/prometheus.yml")
    assert prometheus_config == str(PROMETHEUS), "prometheus.yml is not mounted"


def check_dashboard(dashboard: Doc, datasource_uid: str, queryable: set[str]) -> None:
    assert dashboard["uid"] == "streamrec"
    assert dashboard["schemaVersion"] >= 36
    every = panels(dashboard)
    assert [p["title"] for p in every if p["type"] == "row"] == [
        "Is it up", "Is it fast", "Is it fresh", "Is it good", "Is it flowing",
        "Which variant wins", "The catalogue",
    ]  # fmt: skip
    assert every[0]["type"] == "row", "a panel sits above the first row"
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in every:
        assert panel.get("title", "").strip(), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid, panel["title"]
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} selects no metric"
            unknown = names - queryable
            assert not unknown, f"{panel['title']}: the worker exports no {sorted(unknown)}"
            if "up" in names:
                assert f'job="{SCRAPE_JOB}"' in target["expr"], "up{} of another job"


# Grafana's per-second units: for rates only, never for a count, a ratio or a loss.
PER_SECOND_UNITS = {"ops", "reqps", "rps", "wps", "iops", "eps", "mps", "pps", "cps"}


def check_units(dashboard: Doc) -> None:
    for panel in panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit in PER_SECOND_UNITS:
            assert "per second" in panel["title"], f"{panel['title']}: unit {unit} is a rate"


def check_legends(dashboard: Doc) -> None:
    """A one-word legend on the rate of one counter names what that counter counts
    (the rerouted panel once said `skipped`)."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            legend, names = target.get("legendFormat", ""), metric_names(target["expr"])
            if "rate(" not in target["expr"] or len(names) != 1 or len(legend.split()) != 1:
                continue
            (name,) = names
            word = legend.split("/")[0]
            if name.endswith("_total") and "{{" not in word:
                assert word in name.split("_"), f"{panel['title']}: legend {legend} for {name}"


def readme_dashboard_shape(readme: str) -> tuple[list[str], int]:
    """The rows and panel count the README's docker-compose section gives."""
    match = re.search(
        r"streamrec dashboard\s+provisioned \((\d+) panels in rows: ([^)]*)\)", readme
    )
    assert match, "the README does not describe the dashboard's rows and panels"
    rows = [row.strip() for row in re.split(r",\s*", match.group(2).replace("\n", " "))]
    return rows, int(match.group(1))


def check_dockerfile(text: str, pyproject: Doc) -> None:
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "://" not in text, "the builder supplies index URLs; the Dockerfile names none"
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r'^ARG PIP_EXTRA_INDEX_URL=(?:"")?$', text, re.M), "index ARG, empty default"
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    torch_at = [i for i, line in enumerate(instructions) if torch_pin in line.split()]
    assert torch_at and instructions[torch_at[0]].startswith("RUN pip install"), torch_pin
    source = [line.split()[2] for line in instructions if re.match(r"COPY \.(/)? ", line)]
    assert source, "the project source is never copied in"
    # An install argument without quotes or extras: `'/src[dev]'` installs /src too.
    paths = [
        {re.sub(r"\[.*\]$", "", t.strip("'\"")) for t in line.split()} for line in instructions
    ]
    project_at = [
        i
        for i, line in enumerate(instructions)
        if line.startswith("RUN pip install") and paths[i] & {".", *source}
    ]
    assert project_at, "the project is never pip-installed"
    for i in project_at:
        assert "[" not in instructions[i], "the image installs an extra (dev-only packages)"
    assert torch_at[0] < project_at[0], "torch must be installed before the project"
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoint = [line for line in instructions if line.startswith("ENTRYPOINT")][-1]
    script = json.loads(entrypoint.split(None, 1)[1])[0]
    assert script in pyproject["project"]["scripts"], f"{script} is not a console script"


def check_dockerignore(text: str, pyproject: Doc) -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", ".git", ".streamrec", "test-artifacts"):
        assert required in patterns, f".dockerignore must exclude {required}"
    needed = ["pyproject.toml", pyproject["project"]["readme"]]
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed += [f"{package}/__init__.py" for package in included if "." not in package]
    for path in needed:
        prefixes = ["/".join(path.split("/")[: n + 1]) for n in range(path.count("/") + 1)]
        excluded = [p for p in patterns if any(fnmatch.fnmatch(x, p) for x in prefixes)]
        assert not excluded, f"{path} is needed by `pip install` but excluded by {excluded}"


# ---- tests on the real files -----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def prometheus() -> Doc:
    return yaml.safe_load(PROMETHEUS.read_text())


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    return provisioned("datasources")["uid"]


@pytest.fixture(scope="module")
def pyproject() -> Doc:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_streamrec_services_set_only_real_settings(compose: Doc) -> None:
    assert set(streamrec_services(compose)) >= {"worker", "producer"}
    check_streamrec_env(compose)


def test_streamrec_commands_parse(compose: Doc) -> None:
    assert command(compose["services"]["worker"])[0] == "worker"
    assert command(compose["services"]["producer"])[0] == "produce"
    check_commands(compose)


def test_scrape_target_and_published_port_are_the_worker_web_port(
    compose: Doc, prometheus: Doc
) -> None:
    check_web_port(compose, prometheus)


def test_scrape_job(prometheus: Doc) -> None:
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    assert job["scrape_interval"] == "5s"


def test_topics_are_the_defaults_everywhere(compose: Doc) -> None:
    check_topics(compose)


def test_published_ports_bind_loopback_only(compose: Doc) -> None:
    check_loopback(compose)


def test_kafka_is_kraft_and_advertises_the_worker_bootstrap(compose: Doc) -> None:
    check_kafka(compose)


def test_worker_waits_for_healthy_kafka_and_redis(compose: Doc) -> None:
    check_dependencies(compose)


def test_redis_requires_the_password_the_worker_uses(compose: Doc) -> None:
    check_redis_auth(compose)


def test_grafana_provisioning_is_mounted(compose: Doc) -> None:
    check_grafana(compose)


def test_dashboard_queries_only_exported_metrics(dashboard: Doc, datasource_uid: str) -> None:
    check_dashboard(dashboard, datasource_uid, queryable_names())


def test_dashboard_shows_every_metric_family(dashboard: Doc) -> None:
    shown = {
        name
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    for family in WorkerMetrics().registry.collect():
        # prometheus_client's standard process_* metrics are there for any dashboard or
        # alert a user already has; this one shows CPU, and memory as streamrec's own.
        if family.name.startswith("process_") and family.name != "process_cpu_seconds":
            continue
        assert any(name.startswith(family.name) for name in shown), f"{family.name} not shown"


def test_the_worker_exports_the_standard_process_metrics() -> None:
    names = exported_names(WorkerMetrics())
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert {"process_open_fds", "process_start_time_seconds"} <= names


def test_per_second_units_only_on_rates(dashboard: Doc) -> None:
    check_units(dashboard)


def test_legends_name_what_their_counter_counts(dashboard: Doc) -> None:
    check_legends(dashboard)


def test_the_readme_gives_the_dashboards_rows_and_panel_count(dashboard: Doc) -> None:
    rows, count = readme_dashboard_shape((ROOT / "README.md").read_text())
    every = panels(dashboard)
    assert rows == [p["title"].lower() for p in every if p["type"] == "row"]
    assert count == len([p for p in every if p["type"] != "row"])


def test_dockerfile_installs_pinned_torch_before_the_project(pyproject: Doc) -> None:
    check_dockerfile(DOCKERFILE.read_text(), pyproject)


def test_dockerignore_keeps_what_the_build_needs(pyproject: Doc) -> None:
    check_dockerignore(DOCKERIGNORE.read_text(), pyproject)


def test_metric_names_reads_promql() -> None:
    expr = 'histogram_quantile(0.99, sum by (stage, le) (rate(streamrec_x_bucket{a="b_c"}[5m])))'
    assert metric_names(expr) == {"streamrec_x_bucket"}
    assert metric_names('up{job="streamrec-worker"} or on(instance) vector(0)') == {"up"}
    assert metric_names("x:rate:1h < (2 / 3) * (x:rate:1h offset 1d)") == {"x:rate:1h"}
    assert "streamrec_events_consumed" not in queryable_names()  # family name, no sample


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_prometheus_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the checks catch drift ------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation setting one value, addressed like `services.worker.ports.0`."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


WORKER_ENV = "services.worker.environment"
COMPOSE_DRIFTS = {
    "unknown setting": (_set(f"{WORKER_ENV}.STREAMREC_WEB_PROT", "6066"), check_streamrec_env),
    "bad setting value": (_set(f"{WORKER_ENV}.STREAMREC_PARTITIONS", "four"), check_streamrec_env),
    "producer flags": (_set("services.producer.command.7", "--rates"), check_commands),
    "web port": (_set(f"{WORKER_ENV}.STREAMREC_WEB_PORT", 6067), check_web_port),
    "loopback web host": (_set(f"{WORKER_ENV}.STREAMREC_WEB_HOST", "127.0.0.1"), check_web_port),
    "published port": (_set("services.worker.ports.0", "127.0.0.1:6066:6067"), check_web_port),
    "worker topic": (_set(f"{WORKER_ENV}.STREAMREC_DLQ_TOPIC", "dlq"), check_topics),
    "producer topic": (
        _set("services.producer.environment.STREAMREC_CLICKS_TOPIC", "click"),
        check_topics,
    ),
    "producer flag": (_set("services.producer.command", ["produce", "--topic", "x"]), check_topics),
    "all interfaces": (_set("services.redis.ports.0", "6379:6379"), check_loopback),
    "zookeeper mode": (
        _set("services.kafka.environment.KAFKA_PROCESS_ROLES", "broker"),
        check_kafka,
    ),
    "bootstrap": (_set(f"{WORKER_ENV}.STREAMREC_BOOTSTRAP_SERVERS", "kafka:9093"), check_kafka),
    "host listener": (_set("services.kafka.ports.0", "127.0.0.1:9095:9094"), check_kafka),
    "redis host": (_set(f"{WORKER_ENV}.STREAMREC_REDIS_URL", "redis://cache:6379/0"),
                   check_dependencies),
    "redis without password": (_set("services.redis.command", ["redis-server"]), check_redis_auth),
    "redis secret unmounted": (_set("services.redis.secrets", []), check_redis_auth),
    "worker secret unmounted": (_set("services.worker.secrets", []), check_streamrec_env),
    "worker secret elsewhere": (
        _set(f"{WORKER_ENV}.STREAMREC_REDIS_PASSWORD_FILE", "/etc/redis_password"),
        check_streamrec_env,
    ),
    "worker without password": (
        lambda doc: doc["services"]["worker"]["environment"].pop("STREAMREC_REDIS_PASSWORD_FILE"),
        check_redis_auth,
    ),
    "grafana mount": (
        _set("services.grafana.volumes.1", "./deploy/grafana/dashboards:/dashboards:ro"),
        check_grafana,
    ),
}  # fmt: skip


@pytest.mark.parametrize("drift", sorted(COMPOSE_DRIFTS))
def test_compose_checks_catch_drift(compose: Doc, prometheus: Doc, drift: str) -> None:
    mutate, check = COMPOSE_DRIFTS[drift]
    drifted = copy.deepcopy(compose)
    mutate(drifted)
    args = (drifted, prometheus) if check is check_web_port else (drifted,)
    with pytest.raises((AssertionError, SettingsError)):
        check(*args)


def test_scrape_target_check_catches_drift(compose: Doc, prometheus: Doc) -> None:
    drifted = copy.deepcopy(prometheus)
    drifted["scrape_configs"][0]["static_configs"][0]["targets"] = ["worker:6067"]
    with pytest.raises(AssertionError, match="web_port"):
        check_web_port(compose, drifted)


@pytest.mark.parametrize(
    ("expr", "uid"),
    [
        ("sum(rate(streamrec_events_consumed[1m]))", "prometheus"),  # counter without _total
        ("rate(streamrec_clicks_total[1m])", "prometheus"),  # not a worker metric
        ("sum(rate(events_consumed_total[1m]))", "prometheus"),  # missing prefix
        ('up{job="another"}', "prometheus"),
        ("streamrec_index_items", "other-datasource"),
    ],
)
def test_dashboard_check_catches_drift(
    dashboard: Doc, datasource_uid: str, expr: str, uid: str
) -> None:
    drifted = copy.deepcopy(dashboard)
    panel = next(p for p in drifted["panels"] if p["type"] != "row")
    panel["targets"][0]["expr"] = expr
    panel["targets"][0]["datasource"]["uid"] = uid
    with pytest.raises(AssertionError):
        check_dashboard(drifted, datasource_uid, queryable_names())


def test_unit_and_legend_checks_catch_drift(dashboard: Doc) -> None:
    drifted = copy.deepcopy(dashboard)
    lag = next(p for p in panels(drifted) if p["title"].startswith("Consumer lag"))
    lag["fieldConfig"]["defaults"]["unit"] = "mps"
    with pytest.raises(AssertionError, match="Consumer lag"):
        check_units(drifted)
    drifted = copy.deepcopy(dashboard)
    rerouted = next(p for p in panels(drifted) if p["title"].startswith("Clicks rerouted"))
    rerouted["targets"][0]["legendFormat"] = "skipped"
    with pytest.raises(AssertionError, match="legend skipped"):
        check_legends(drifted)


def test_dockerfile_check_catches_drift(pyproject: Doc) -> None:
    text = DOCKERFILE.read_text()
    torch_line = "RUN pip install torch==2.13.0\n"
    assert torch_line in text
    late_torch = text.replace(torch_line, "") + torch_line
    bumped = copy.deepcopy(pyproject)
    bumped["project"]["dependencies"] = [
        "torch==2.14.0" if d.startswith("torch") else d
        for d in pyproject["project"]["dependencies"]
    ]
    root = text.replace("USER 10001", "USER root")
    dev = text.replace("RUN pip install /src", "RUN pip install '/src[dev]'")
    assert dev != text
    for drifted_text, project in (
        (late_torch, pyproject),
        (text, bumped),
        (root, pyproject),
        (dev, pyproject),
    ):
        with pytest.raises(AssertionError):
            check_dockerfile(drifted_text, project)


def test_dockerignore_check_catches_drift(pyproject: Doc) -> None:
    with pytest.raises(AssertionError, match="stream/__init__.py"):
        check_dockerignore(DOCKERIGNORE.read_text() + "\nstream\n", pyproject)
