"""Settings: defaults, then STREAMREC_* variables, then flags; bad values name themselves."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stream.settings
from stream.settings import (
    ENV_PREFIX,
    EXCLUSION_POLICIES,
    MODELS,
    Settings,
    SettingsError,
    describe,
    secret_file_variables,
    unknown_variables,
)


@pytest.fixture(autouse=True)
def nothing_reported_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown variables are reported once per process: start each test afresh."""
    monkeypatch.setattr(stream.settings, "_warned", set())


INT_FIELDS = [f.name for f in fields(Settings) if f.type in ("int", int)]


def test_defaults_bind_loopback_only() -> None:
    s = Settings()
    assert s.web_host == "127.0.0.1"
    assert ipaddress.ip_address(s.web_host).is_loopback


def test_defaults_are_valid_choices() -> None:
    s = Settings()
    assert s.model in MODELS
    assert s.exclude in EXCLUSION_POLICIES
    assert s.top_k == 10


def test_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_environment_overrides_defaults() -> None:
    s = Settings.from_env({"STREAMREC_TOP_K": "5", "STREAMREC_MODEL": "covisit"})
    assert s.top_k == 5
    assert isinstance(s.top_k, int)
    assert s.model == "covisit"
    assert s.replace(top_k=10, model="torch") == Settings()


def test_unrelated_variables_are_ignored() -> None:
    env = {"TOP_K": "3", "STREAMREC_NOT_A_SETTING": "x", "streamrec_top_k": "4"}
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("STREAMREC_BOOTSTRAP_SERVER", "STREAMREC_BOOTSTRAP_SERVERS"),
        ("STREAMREC_WEB_PROT", "STREAMREC_WEB_PORT"),
        ("STREAMREC_TOPK", "STREAMREC_TOP_K"),
        ("STREAMREC_REDIS_PASSWORD_FIEL", "STREAMREC_REDIS_PASSWORD_FILE"),
    ],
)
def test_a_misspelled_variable_is_named_with_the_closest_setting(
    variable: str, closest: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stream.settings"):
        assert Settings.from_env({variable: "x"}) == Settings()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"unknown setting {variable} ignored; did you mean {closest}?"


def test_an_unknown_variable_like_no_setting_gets_no_guess() -> None:
    (line,) = unknown_variables({"STREAMREC_FOO": "1", "STREAMREC_TOP_K": "3", "FOO": "1"})
    assert line == "unknown setting STREAMREC_FOO ignored; see `streamrec worker --help`"


def test_each_unknown_variable_is_reported_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"STREAMREC_MODLE": "covisit"}
    with caplog.at_level(logging.WARNING, logger="stream.settings"):
        Settings.from_env(env)
        Settings.from_env(env)
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting STREAMREC_MODLE ignored; did you mean STREAMREC_MODEL?"
    ]


def test_secret_file_variables_are_known() -> None:
    assert unknown_variables(dict.fromkeys(secret_file_variables(), "x")) == []


def test_flags_beat_the_environment() -> None:
    env = {"STREAMREC_TOP_K": "5", "STREAMREC_CLICKS_TOPIC": "from-env"}
    s = Settings.from_env(env, top_k=7, clicks_topic="from-flag")
    assert (s.top_k, s.clicks_topic) == (7, "from-flag")


def test_flags_left_as_none_do_not_override() -> None:
    # argparse leaves unset flags as None; they must not mask the environment.
    s = Settings.from_env({"STREAMREC_TOP_K": "5"}, top_k=None, model=None)
    assert s.top_k == 5
    assert s.model == Settings().model


def test_reads_os_environ_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMREC_DIM", "16")
    assert Settings.from_env().dim == 16


def test_int_fields_are_found() -> None:
    # Guards the parametrization below against silently running zero cases.
    assert {"top_k", "dim", "web_port", "user_ttl_s", "seed"} <= set(INT_FIELDS)


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("raw", ["five", "5.0", ""])
def test_bad_int_names_the_variable(name: str, raw: str) -> None:
    variable = ENV_PREFIX + name.upper()
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize(
    "name",
    [
        "partitions",
        "dim",
        "top_k",
        "max_event_bytes",
        "dedup_window",
        "vector_flush_ms",
        "fetch_max_wait_ms",
        "pipeline_batches",
    ],
)
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_sizes_are_rejected(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{ENV_PREFIX}{name.upper()} must be at least 1"):
        Settings.from_env({ENV_PREFIX + name.upper(): value})


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_web_port_out_of_range_is_rejected(port: int) -> None:
    with pytest.raises(SettingsError, match="STREAMREC_WEB_PORT"):
        Settings(web_port=port)


@pytest.mark.parametrize(
    "name", ["max_users", "user_idle_s", "memory_cap_mb", "item_embedding_dim"]
)
def test_negative_counts_that_may_be_zero_are_rejected(name: str) -> None:
    with pytest.raises(SettingsError, match=f"^{ENV_PREFIX}{name.upper()} must be 0 .off. or more"):
        Settings.from_env({ENV_PREFIX + name.upper(): "-1"})
    assert getattr(Settings.from_env({ENV_PREFIX + name.upper(): "0"}), name) == 0


def test_the_catalogue_settings_and_their_defaults() -> None:
    # Issue 15: the worker side reads these names; embeddings are off by default.
    s = Settings.from_env({})
    assert (s.items_topic, s.items_dlq_topic, s.item_embedding_dim) == ("items", "items.dlq", 0)
    env = {
        "STREAMREC_ITEMS_TOPIC": "catalogue",
        "STREAMREC_ITEMS_DLQ_TOPIC": "catalogue.dlq",
        "STREAMREC_ITEM_EMBEDDING_DIM": "384",
    }
    s = Settings.from_env(env)
    assert (s.items_topic, s.items_dlq_topic, s.item_embedding_dim) == (
        "catalogue",
        "catalogue.dlq",
        384,
    )


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("model", ["transformer", "", "Torch"])
def test_unknown_model_is_rejected_naming_the_variable(model: str) -> None:
    # The variable is what a user set, so it is what the error names (issue 14).
    with pytest.raises(SettingsError, match="^STREAMREC_MODEL must be one of torch, "):
        Settings.from_env({"STREAMREC_MODEL": model})
    with pytest.raises(SettingsError, match="^STREAMREC_MODEL must be one of"):
        Settings.from_env({}, model=model)


@pytest.mark.parametrize("exclude", ["all", "", "SEEN"])
def test_unknown_exclusion_policy_is_rejected(exclude: str) -> None:
    with pytest.raises(SettingsError, match="^STREAMREC_EXCLUDE must be one of"):
        Settings.from_env({"STREAMREC_EXCLUDE": exclude})


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("exclude", EXCLUSION_POLICIES)
def test_every_model_and_policy_is_accepted(model: str, exclude: str) -> None:
    s = Settings.from_env({"STREAMREC_MODEL": model, "STREAMREC_EXCLUDE": exclude})
    assert (s.model, s.exclude) == (model, exclude)


def test_to_env_round_trips_the_defaults() -> None:
    s = Settings()
    env = s.to_env()
    assert set(env) == {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert all(isinstance(v, str) for v in env.values())
    assert Settings.from_env(env) == s


def test_to_env_round_trips_changed_settings() -> None:
    s = Settings(
        bootstrap_servers="10.0.0.1:9093,10.0.0.2:9093",
        redis_url="redis://example:6380/2",
        redis_prefix="t1:",
        user_ttl_s=0,
        clicks_topic="c",
        partitions=1,
        web_host="0.0.0.0",
        web_port=8080,
        model="popularity",
        dim=8,
        top_k=3,
        exclude="none",
        seed=-7,
        log_level="debug",
    )
    assert s != Settings()
    assert Settings.from_env(s.to_env()) == s


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=50, deadline=None)
@given(
    top_k=st.integers(1, 10_000),
    seed=st.integers(-(2**40), 2**40),
    web_port=st.integers(1, 65535),
    model=st.sampled_from(MODELS),
    exclude=st.sampled_from(EXCLUSION_POLICIES),
    redis_prefix=_text,
    clicks_topic=_text,
)
def test_to_env_round_trip_property(
    top_k: int,
    seed: int,
    web_port: int,
    model: str,
    exclude: str,
    redis_prefix: str,
    clicks_topic: str,
) -> None:
    s = Settings(
        top_k=top_k,
        seed=seed,
        web_port=web_port,
        model=model,
        exclude=exclude,
        redis_prefix=redis_prefix,
        clicks_topic=clicks_topic,
    )
    assert Settings.from_env(s.to_env()) == s


def test_topics_are_distinct_and_include_internal_topics() -> None:
    s = Settings()
    topics = s.topics()
    assert len(topics) == len(set(topics))
    assert s.changelog_topic in topics
    assert s.by_user_topic in topics
    assert {s.clicks_topic, s.recommendations_topic, s.dlq_topic} <= set(topics)
    assert {s.items_topic, s.items_dlq_topic} <= set(topics)


def test_internal_topics_follow_app_id_and_clicks_topic() -> None:
    a = Settings(app_id="a", clicks_topic="clicks-1")
    b = Settings(app_id="b", clicks_topic="clicks-2")
    assert a.changelog_topic != b.changelog_topic
    assert a.by_user_topic != b.by_user_topic
    assert "a" in a.changelog_topic and "clicks-1" in a.by_user_topic
    internal = {a.changelog_topic, a.by_user_topic, b.changelog_topic, b.by_user_topic}
    assert len(internal) == 4
    assert a.item_deltas_topic.startswith("a-") and a.item_vectors_topic.startswith("a-")
    assert a.admin_topic == "a-admin"
    assert len(set(a.topics())) == 10


def test_describe_covers_every_field_with_its_default_and_help() -> None:
    rows = describe()
    assert [variable for variable, _, _ in rows] == [
        ENV_PREFIX + f.name.upper() for f in fields(Settings)
    ]
    defaults = Settings()
    for (variable, default, help_text), f in zip(rows, fields(Settings), strict=True):
        assert default == str(getattr(defaults, f.name)), variable
        assert help_text.strip(), f"{variable} has no help text"


def test_describe_defaults_parse_back_to_the_defaults() -> None:
    env = {variable: default for variable, default, _ in describe()}
    assert Settings.from_env(env) == Settings()


def test_model_and_event_type_names_come_from_the_model_layer():
    import model.base
    import stream.events

    assert MODELS is model.base.MODEL_NAMES
    assert stream.events.EVENT_TYPES is model.base.EVENT_TYPES
