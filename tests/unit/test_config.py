"""The config loader: the bundled example, every class of error (exact messages), secrets, merging."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from addon.config import ConfigError, load_config, parse_config, parse_duration
from addon.formats import family_paths
from addon.model import (
    DEFAULT_CLIENT_ERRORS,
    DEFAULT_FAILOVER_4XX,
    BreakerPolicy,
    Config,
    Price,
    RetrySame,
    Timeouts,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-SECRET-123"
SRC = Path("config.yaml")

BASE: dict[str, Any] = {
    "apps": {
        "claude": {
            "hosts": ["api.anthropic.com"],
            "providers": [
                {"id": "anthropic", "base_url": "https://api.anthropic.com"},
                {"id": "backup", "base_url": "https://backup.example/api/", "api_key": "${BACKUP_API_KEY}"},
            ],
        },
    },
}


def doc(**changes: Any) -> dict[str, Any]:
    """A deep copy of BASE with top-level keys replaced."""
    out = copy.deepcopy(BASE)
    out.update(changes)
    return out


def claude(**changes: Any) -> dict[str, Any]:
    """BASE with keys of the claude app replaced."""
    out = doc()
    out["apps"]["claude"].update(changes)
    return out


def backup(**changes: Any) -> dict[str, Any]:
    """BASE with keys of the backup provider replaced (None removes a key)."""
    out = doc()
    provider = out["apps"]["claude"]["providers"][1]
    provider.update(changes)
    for key in [k for k, v in provider.items() if v is None]:
        del provider[key]
    return out


def parse(document: object, env: dict[str, str] | None = None) -> Config:
    text = yaml.safe_dump(document, sort_keys=False)
    return parse_config(text, SRC, {"BACKUP_API_KEY": SECRET} if env is None else env)


def error(document: object, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(document, env)
    return str(info.value)


# --- the bundled config.yaml -------------------------------------------------------------------------


def test_bundled_config_loads_without_any_environment() -> None:
    cfg = load_config(REPO / "config.yaml", env={})
    assert [a.name for a in cfg.apps] == ["claude", "codex", "gemini"]
    assert all(p.api_key is None for a in cfg.apps for p in a.providers)
    assert [p.id for p in cfg.app("claude").providers] == ["anthropic"]  # type: ignore[union-attr]
    assert cfg.app_for_host("generativelanguage.googleapis.com").api == "gemini"  # type: ignore[union-attr]
    assert cfg.state == REPO / "detour.db"
    # The example's breaker: the recovery probe every 5 s, the backoff capped at 2 minutes.
    assert cfg.breaker == BreakerPolicy(open_for=30.0, max_open_for=120.0, recovery_probe=5.0)
    joined = "\n".join(cfg.warnings)
    assert "ZHIPU_API_KEY" in joined and "OPENROUTER_API_KEY" in joined
    assert all(w.startswith(f"{REPO / 'config.yaml'}: apps.") for w in cfg.warnings)


def test_bundled_config_enables_backups_when_keys_are_set() -> None:
    env = {"ZHIPU_API_KEY": "zk", "OPENROUTER_API_KEY": "ok", "DEEPSEEK_API_KEY": "dk"}
    cfg = load_config(REPO / "config.yaml", env=env)
    assert cfg.warnings == ()
    claude_app = cfg.app("claude")
    assert claude_app is not None
    assert [p.id for p in claude_app.providers] == ["anthropic", "zhipu", "openrouter", "deepseek"]
    deepseek = claude_app.providers[3]
    assert (deepseek.api, deepseek.auth) == ("openai-chat", "bearer")
    assert deepseek.map_model("claude-x") == "deepseek-chat"
    zhipu = claude_app.providers[1]
    assert zhipu.api_key == "zk" and zhipu.auth == "bearer"
    assert zhipu.map_model("claude-sonnet-4-5") == "glm-4.6"
    assert zhipu.breaker.open_for == 60.0 and zhipu.breaker.max_open_for == 120.0
    openrouter = claude_app.providers[2]
    assert openrouter.base_url + "/v1/messages" == "https://openrouter.ai/api/v1/messages"
    assert openrouter.map_model("claude-opus-4-1") == "anthropic/claude-opus-4.1"
    codex = cfg.app("codex")
    assert codex is not None and codex.providers[1].api_key == "ok"
    assert codex.timeouts == Timeouts(first_byte_unstreamed=600.0)  # the rest as the top level's
    assert cfg.timeouts == Timeouts()  # the example carries the defaults
    assert (codex.retry_same, codex.continue_streams) == (RetrySame(), True)


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("1.5s", 1.5), (" 2m ", 120.0),
     ("0s", 0.0), (0, 0.0), (45, 45.0), (2.5, 2.5)],
)  # fmt: skip
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "must be a duration such as 500ms, 30s, 10m or 1h, got '5x'"),
        ("30", "must be a duration such as 500ms, 30s, 10m or 1h, got '30'"),
        ("-1s", "must be a duration such as 500ms, 30s, 10m or 1h, got '-1s'"),
        ("", "must be a duration such as 500ms, 30s, 10m or 1h, got ''"),
        (True, "must be a duration such as 500ms, 30s, 10m or 1h, got boolean"),
        (None, "must be a duration such as 500ms, 30s, 10m or 1h, got null"),
        ([1], "must be a duration such as 500ms, 30s, 10m or 1h, got list"),
        (float("inf"), "must be a duration such as 500ms, 30s, 10m or 1h, got inf"),
        (-1, "must not be negative, got -1"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


# --- files and YAML ----------------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == f"{path}: cannot read file: No such file or directory"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apps:\n  claude:\n    hosts: [a\n",
         "line 4, column 1: expected ',' or ']', but got '<stream end>'"),
        ("apps: {}\napps: {}\n", "line 2, column 1: duplicate key 'apps'"),
        ("apps:\n\tclaude: {}\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ],
)
def test_yaml_errors_give_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC, {})
    assert str(info.value) == f"config.yaml: invalid YAML at {message}"


def test_state_is_relative_to_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.yaml"
    path.write_text(yaml.safe_dump(doc(state="data/detour.db")))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("conf/config.yaml"), env={})
    assert cfg.state == tmp_path / "conf" / "data" / "detour.db"
    assert cfg.state.is_absolute()
    path.write_text(yaml.safe_dump(doc()))
    assert load_config(path, env={}).state == tmp_path / "conf" / "detour.db"


def test_load_config_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc()))
    monkeypatch.setenv("BACKUP_API_KEY", SECRET)
    assert load_config(path).apps[0].providers[1].api_key == SECRET
    monkeypatch.delenv("BACKUP_API_KEY")
    assert len(load_config(path).apps[0].providers) == 1


# --- defaults ----------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = parse(doc())
    assert (cfg.breaker, cfg.timeouts) == (BreakerPolicy(), Timeouts())
    assert (cfg.switch_min_interval, cfg.attempt_log_limit, cfg.warnings) == (10.0, 10_000, ())
    app = cfg.apps[0]
    assert (app.max_attempts, app.api, app.paths) == (3, "anthropic", family_paths("anthropic"))
    assert app.routes_path("/v1/messages/count_tokens?beta=true") and not app.routes_path("/v1/models")
    assert app.statuses.client_errors == DEFAULT_CLIENT_ERRORS
    first, second = app.providers
    assert (first.api_key, first.auth) == (None, "x-api-key")
    assert (second.base_url, second.api_key) == ("https://backup.example/api", SECRET)


@pytest.mark.parametrize(
    ("hosts", "shape", "auth"),
    [
        (["api.anthropic.com"], "anthropic", "x-api-key"),
        (["API.OpenAI.com."], "openai", "bearer"),
        (["generativelanguage.googleapis.com"], "gemini", "x-goog-api-key"),
        (["llm.internal", "proxy.anthropic.example"], "anthropic", "x-api-key"),
    ],
)
def test_error_shape_and_auth_follow_the_hosts(hosts: list[str], shape: str, auth: str) -> None:
    app = parse(claude(hosts=hosts)).apps[0]
    assert app.api == shape and app.paths == family_paths(app.api)
    assert app.providers[1].auth == auth
    assert app.hosts == tuple(h.lower().rstrip(".") for h in hosts)


def test_explicit_shape_paths_and_statuses() -> None:
    app = parse(claude(error_shape="openai", paths=["/v2/*"], failover_statuses=[400, 520],
                       client_error_statuses=[422])).apps[0]  # fmt: skip
    assert (app.api, app.paths, app.providers[0].auth) == ("openai", ("/v2/*",), "bearer")
    assert app.statuses.failover == DEFAULT_FAILOVER_4XX | {400, 520}
    assert app.statuses.client_errors == {422}
    assert app.statuses.is_failover(400) and not app.statuses.is_failover(422)


def test_models_keep_their_order() -> None:
    provider = parse(backup(models={"claude-opus-*": "big", "claude-*": "small"})).apps[0].providers[1]
    assert provider.models == (("claude-opus-*", "big"), ("claude-*", "small"))
    assert provider.map_model("claude-opus-4") == "big" and provider.map_model("gpt-4") is None


def test_prices_keep_their_order_and_a_provider_may_scale_them() -> None:
    document = backup(price_multiplier=0.8)
    opus = {"input": 15, "output": 75, "cache_read": 1.5, "cache_write": 18.75}
    document["prices"] = {"claude-opus-*": opus, "claude-*": {"input": 3, "output": 15}}
    cfg = parse(document)
    assert cfg.price("claude-opus-4-1") == Price(15.0, 75.0, 1.5, 18.75)
    assert cfg.price("claude-sonnet-4-5") == Price(3.0, 15.0)
    assert cfg.price("gpt-5") is None
    assert cfg.apps[0].providers[1].price_multiplier == 0.8
    assert cfg.apps[0].providers[0].price_multiplier == 1.0


# --- overrides ---------------------------------------------------------------------------------------


def test_breaker_and_timeouts_overrides_merge_field_by_field() -> None:
    document = claude(timeouts={"idle": "5m"})
    document["breaker"] = {"failure_threshold": 5, "open_for": "1m"}
    document["timeouts"] = {"connect": "3s", "first_byte": 30}
    document["apps"]["claude"]["providers"][1]["breaker"] = {"error_rate": 1, "max_open_for": "1h"}
    cfg = parse(document)
    assert cfg.breaker == BreakerPolicy(failure_threshold=5, open_for=60.0)
    assert cfg.timeouts == Timeouts(connect=3.0, first_byte=30.0, idle=120.0)
    assert cfg.apps[0].timeouts == Timeouts(connect=3.0, first_byte=30.0, idle=300.0)
    first, second = cfg.apps[0].providers
    assert first.breaker == cfg.breaker
    assert second.breaker == BreakerPolicy(failure_threshold=5, open_for=60, error_rate=1, max_open_for=3600)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), (2, 2.0), (1.5, 1.5), ("1m", 60.0),
     (0, 0.0), ("0s", 0.0), (False, 0.0), ("off", 0.0), ("Off", 0.0)],
)  # fmt: skip
def test_recovery_probe_interval_or_off(value: object, seconds: float) -> None:
    assert parse(doc(breaker={"recovery_probe": value})).breaker.recovery_probe == seconds


def test_recovery_probe_is_overridden_per_provider() -> None:
    document = doc(breaker={"recovery_probe": "10s"})
    document["apps"]["claude"]["providers"][1]["breaker"] = {"recovery_probe": "off"}
    first, second = parse(document).apps[0].providers
    assert (first.breaker.recovery_probe, second.breaker.recovery_probe) == (10.0, 0.0)


RECOVERY_HINT = "must be a duration such as 500ms, 30s, 10m or 1h (at most 24h), or 0 / off to disable it"


@pytest.mark.parametrize(
    ("value", "shown"),
    [("soon", "'soon'"), (True, "true"), (-1, "-1"), ("-5s", "'-5s'"), ("25h", "'25h'"), ([5], "list"),
     ("on", "'on'")],
)  # fmt: skip
def test_bad_recovery_probe_names_the_key_path(value: object, shown: str) -> None:
    assert error(doc(breaker={"recovery_probe": value})) == (
        f"config.yaml: breaker.recovery_probe: {RECOVERY_HINT}, got {shown}"
    )
    assert error(backup(breaker={"recovery_probe": value})) == (
        f"config.yaml: {P1}.breaker.recovery_probe: {RECOVERY_HINT}, got {shown}"
    )


def test_top_level_scalars() -> None:
    cfg = parse(doc(switch_min_interval="0s", attempt_log_limit=100))
    assert (cfg.switch_min_interval, cfg.attempt_log_limit) == (0.0, 100)


# --- environment variables ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"BACKUP_API_KEY": ""}])
def test_unset_variable_disables_the_provider_with_a_warning(env: dict[str, str]) -> None:
    cfg = parse(doc(), env)
    assert [p.id for p in cfg.apps[0].providers] == ["anthropic"]
    assert cfg.warnings == (
        "config.yaml: apps.claude.providers[1] (backup): disabled, "
        "environment variable BACKUP_API_KEY is not set",
    )


def test_variables_expand_in_base_url_too() -> None:
    document = backup(base_url="https://${HOST}/${PREFIX}", api_key="k-${A}-${A}")
    provider = parse(document, {"HOST": "h.example", "PREFIX": "v", "A": "x"}).apps[0].providers[1]
    assert (provider.base_url, provider.api_key) == ("https://h.example/v", "k-x-x")
    assert parse(document, {"A": "x"}).warnings == (
        "config.yaml: apps.claude.providers[1] (backup): disabled, "
        "environment variables HOST, PREFIX are not set",
    )


def test_enabled_false_drops_the_provider_silently() -> None:
    cfg = parse(backup(enabled=False))
    assert [p.id for p in cfg.apps[0].providers] == ["anthropic"] and cfg.warnings == ()


def test_all_providers_disabled_is_an_error() -> None:
    document = doc()
    document["apps"]["claude"]["providers"][0]["enabled"] = False
    assert error(document, {}) == (
        "config.yaml: apps.claude.providers: every provider is disabled "
        "(anthropic: enabled is false; backup: environment variable BACKUP_API_KEY is not set)"
    )


# --- exact error messages ----------------------------------------------------------------------------

P1 = "apps.claude.providers[1]"
DURATION = "must be a duration such as 500ms, 30s, 10m or 1h"
REF = "malformed ${...} reference, expected ${NAME} with NAME of letters, digits and _"
BREAKER_KEYS = ", ".join(sorted(f.name for f in dataclasses.fields(BreakerPolicy)))
APP_KEYS = ("api, client_error_statuses, continue_streams, error_shape, failover_statuses, hosts, "
            "max_attempts, paths, providers, retry_same, timeouts")

#: (document, message without the leading "config.yaml: ")
ERRORS = [
    # structure and types
    (["apps"], "must be a mapping, got list"),
    ({}, "missing required key 'apps'"),
    (doc(apps={}), "apps: must not be empty"),
    (doc(apps=[1]), "apps: must be a mapping, got list"),
    (doc(apps={"claude": "x"}), "apps.claude: must be a mapping, got string"),
    (doc(apps={"Claude": BASE["apps"]["claude"]}), "apps.Claude: app name must match [a-z][a-z0-9_-]*"),
    (claude(hosts=None), "apps.claude: missing required key 'hosts'"),
    (claude(hosts="api.anthropic.com"), "apps.claude.hosts: must be a list, got string"),
    (claude(hosts=[]), "apps.claude.hosts: must not be empty"),
    (claude(hosts=[7]), "apps.claude.hosts[0]: must be a string, got integer"),
    (claude(providers=[]), "apps.claude.providers: must not be empty"),
    (claude(providers=["x"]), "apps.claude.providers[0]: must be a mapping, got string"),
    (claude(max_attempts=True), "apps.claude.max_attempts: must be an integer, got boolean"),
    (claude(max_attempts="3"), "apps.claude.max_attempts: must be an integer, got string"),
    (claude(max_attempts=11), "apps.claude.max_attempts: must be between 1 and 10, got 11"),
    (doc(attempt_log_limit=99), "attempt_log_limit: must be between 100 and 10000000, got 99"),
    (doc(attempt_log_limit=10**20),
     "attempt_log_limit: must be between 100 and 10000000, got 100000000000000000000"),
    (doc(state=""), "state: must not be empty"),
    (doc(breaker=[]), "breaker: must be a mapping, got list"),
    (backup(enabled="yes"), f"{P1}.enabled: must be true or false, got string"),
    (backup(id=None), f"{P1}: missing required key 'id'"),
    (backup(id="-x"), f"{P1}.id: must match [A-Za-z0-9][A-Za-z0-9_.-]*, got '-x'"),
    (backup(base_url=None), f"{P1}: missing required key 'base_url'"),
    (backup(models=["a"]), f"{P1}.models: must be a mapping, got list"),
    (backup(models={"claude-*": ""}), f"{P1}.models['claude-*']: must not be empty"),
    (backup(models={1: "x"}), f"{P1}.models[1]: model pattern must be a non-empty string, got integer"),
    # unknown keys, at every level
    (doc(stat="x"),
     "stat: unknown key (expected one of: apps, attempt_log_limit, breaker, max_body, prices, state, "
     "switch_min_interval, "
     "timeouts)"),
    (doc(breaker={"treshold": 1}), f"breaker.treshold: unknown key (expected one of: {BREAKER_KEYS})"),
    (doc(timeouts={"read": "1s"}),
     "timeouts.read: unknown key (expected one of: connect, first_byte, first_byte_unstreamed, "
     "first_token, idle)"),
    (claude(host=["x"]), f"apps.claude.host: unknown key (expected one of: {APP_KEYS})"),
    (backup(base_ulr="x"),
     f"{P1}.base_ulr: unknown key (expected one of: api, api_key, auth, base_url, breaker, enabled, id, "
     "models, price_multiplier)"),
    (claude(api="gemini", hosts=["generativelanguage.googleapis.com"], providers=[
        {"id": "p", "base_url": "https://a.example"},
        {"id": "b", "base_url": "https://b.example", "api": "anthropic", "api_key": "k"}]),
     "apps.claude.providers[1].api: Detour can't translate gemini requests to anthropic yet (it can: "
     "anthropic -> openai-chat, openai-chat -> anthropic, openai-responses -> openai-chat, "
     "openai-responses -> anthropic, anthropic -> openai-responses, anthropic -> gemini)"),
    (claude(providers=[{"id": "p", "base_url": "https://a.example"},
                       {"id": "chat", "base_url": "http://127.0.0.1:8000", "api": "openai-chat"}]),
     "apps.claude.providers[1].api_key: is required for a provider with api: openai-chat (the "
     "client's own credentials are for anthropic); a local server that needs none takes any value"),
    (backup(api="grpc"),
     f"{P1}.api: must be one of anthropic, openai-chat, openai-responses, gemini, got 'grpc'"),
    (backup(breaker={"window": "1s", "x": 1}),
     f"{P1}.breaker.x: unknown key (expected one of: {BREAKER_KEYS})"),
    # prices
    (doc(prices=["x"]), "prices: must be a mapping, got list"),
    (doc(prices={"claude-*": {"input": 3}}), "prices['claude-*']: needs output (dollars per million tokens)"),
    (doc(prices={"claude-*": {}}), "prices['claude-*']: needs input and output (dollars per million tokens)"),
    (doc(prices={"claude-*": {"input": "3$", "output": 15}}),
     "prices['claude-*'].input: must be a number, got '3$'"),
    (doc(prices={"claude-*": {"input": -1, "output": 15}}),
     "prices['claude-*'].input: must be from 0 to 10000, got -1"),
    (doc(prices={"claude-*": {"input": 1, "output": 1, "cache": 1}}),
     "prices['claude-*'].cache: unknown key (expected one of: cache_read, cache_write, input, output)"),
    (doc(prices={"": {"input": 1, "output": 1}}),
     "prices['']: model pattern must be a non-empty string, got string"),
    (backup(price_multiplier=True), f"{P1}.price_multiplier: must be a number, got boolean"),
    (backup(price_multiplier=2000), f"{P1}.price_multiplier: must be from 0 to 1000, got 2000"),
    # choices
    (backup(auth="basic"),
     f"{P1}.auth: must be one of x-api-key, bearer, x-goog-api-key, api-key, got 'basic'"),
    (claude(error_shape="cohere"),
     "apps.claude.error_shape: must be one of anthropic, openai, gemini, got 'cohere'"),
    (claude(api="cohere"), "apps.claude.api: must be one of anthropic, openai, gemini, got 'cohere'"),
    (claude(api="openai", error_shape="openai"),
     "apps.claude.error_shape: is the old name of 'api': give only one of them"),
    # URLs, hosts and paths
    (backup(base_url="ftp://x"), f"{P1}.base_url: must be an http:// or https:// URL, got 'ftp://x'"),
    (backup(base_url="api.example"), f"{P1}.base_url: must be an http:// or https:// URL, got 'api.example'"),
    (backup(base_url="https://"), f"{P1}.base_url: must be an http:// or https:// URL, got 'https://'"),
    (backup(base_url="https://x:99999"),
     f"{P1}.base_url: must be an http:// or https:// URL, got 'https://x:99999'"),
    (backup(base_url="https://x/?a=1"),
     f"{P1}.base_url: must not have a query string or fragment, got 'https://x/?a=1'"),
    (backup(base_url="https://bücher.example"),
     f"{P1}.base_url: must be ASCII (write a host name in its xn-- form), got 'https://bücher.example'"),
    (backup(base_url="https://u:p@x"),
     f"{P1}.base_url: must not contain user:password@ credentials, use api_key"),
    (claude(hosts=["https://api.anthropic.com"]),
     "apps.claude.hosts[0]: must be a hostname like api.anthropic.com (no scheme, port or path), "
     "got 'https://api.anthropic.com'"),
    (claude(hosts=["a.example", "A.example"]),
     "apps.claude.hosts[1]: duplicate host 'a.example' (also at apps.claude.hosts[0])"),
    (claude(paths=["v1/messages"]), "apps.claude.paths[0]: must start with '/', got 'v1/messages'"),
    # ranges
    (doc(breaker={"error_rate": 1.5}), "breaker.error_rate: must be > 0 and <= 1, got 1.5"),
    (doc(breaker={"error_rate": 0}), "breaker.error_rate: must be > 0 and <= 1, got 0"),
    (doc(breaker={"error_rate": "50%"}), "breaker.error_rate: must be a number, got string"),
    (doc(breaker={"failure_threshold": 0}),
     "breaker.failure_threshold: must be between 1 and 1000000, got 0"),
    (doc(breaker={"open_for": "9" * 40 + "h"}),
     f"breaker.open_for: must be > 0 and <= 24h, got '{'9' * 40}h'"),
    (doc(breaker={"open_for": "9" * 400 + "h"}),
     "breaker.open_for: must be a duration such as 500ms, 30s, 10m or 1h, got '" + "9" * 57 + "...'"),
    (doc(switch_min_interval="2d"),
     "switch_min_interval: must be a duration such as 500ms, 30s, 10m or 1h, got '2d'"),
    (doc(breaker={"half_open_probes": 1.0}), "breaker.half_open_probes: must be an integer, got number"),
    (doc(breaker={"window": "0s"}), "breaker.window: must be > 0 and <= 24h, got '0s'"),
    (doc(breaker={"open_for": "soon"}), f"breaker.open_for: {DURATION}, got 'soon'"),
    (doc(breaker={"max_open_for": "10s"}), "breaker.max_open_for: must be >= open_for (30s), got 10s"),
    (backup(breaker={"open_for": "20m"}),
     f"{P1}.breaker.max_open_for: must be >= open_for (1200s), got 120s"),
    (doc(timeouts={"idle": "2h"}), "timeouts.idle: must be > 0 and <= 1h, got '2h'"),
    (doc(timeouts={"connect": 0}), "timeouts.connect: must be > 0 and <= 1h, got 0"),
    (claude(timeouts={"connect": "-1s"}), f"apps.claude.timeouts.connect: {DURATION}, got '-1s'"),
    (doc(switch_min_interval=-5), "switch_min_interval: must not be negative, got -5"),
    (claude(failover_statuses=[200]),
     "apps.claude.failover_statuses[0]: must be between 400 and 599, got 200"),
    (claude(client_error_statuses=[500]),
     "apps.claude.client_error_statuses[0]: must be between 400 and 499, got 500"),
    (claude(failover_statuses=[422, 400], client_error_statuses=[400, 422]),
     "apps.claude.failover_statuses: 400 is also listed in client_error_statuses"),
    # duplicates
    (backup(id="anthropic"),
     f"{P1}.id: duplicate provider id 'anthropic' (also at apps.claude.providers[0])"),
    (doc(apps={"claude": BASE["apps"]["claude"], "other": BASE["apps"]["claude"]}),
     "apps.other.hosts[0]: duplicate host 'api.anthropic.com' (also at apps.claude.hosts[0])"),
    # variables
    (backup(api_key="${BACKUP"), f"{P1}.api_key: {REF}"),
    (backup(base_url="https://${1X}/"), f"{P1}.base_url: {REF}"),
    (backup(api_key=""), f"{P1}.api_key: is empty; write `api_key: none` to pass the client's own "
                         "credentials on, or set a key"),
    (backup(api_key="sk-abc\r\nx-injected: 1"),
     f"{P1}.api_key: must not contain spaces or control characters"),
    (backup(api_key="sk-abc def"), f"{P1}.api_key: must not contain spaces or control characters"),
    (backup(base_url="https://a.example/x y"),
     f"{P1}.base_url: must not contain spaces or control characters, got 'https://a.example/x y'"),
    (backup(api_key=12345), f"{P1}.api_key: must be a string, got integer"),
]


@pytest.mark.parametrize(("document", "message"), ERRORS)
def test_exact_error_messages(document: object, message: str) -> None:
    assert error(document) == f"config.yaml: {message}"


def test_long_values_are_truncated() -> None:
    message = error(backup(auth="x" * 100))
    expected = f"{P1}.auth: must be one of x-api-key, bearer, x-goog-api-key, api-key, got '{'x' * 57}...'"
    assert message == f"config.yaml: {expected}"


# --- secrets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        backup(api_key=f"{SECRET}${{"),  # malformed reference
        backup(api_key=SECRET, auth="basic"),  # a later error in the same provider
        backup(api_key=SECRET, base_url=f"https://user:{SECRET}@x.example"),  # credentials in the URL
        backup(base_url="ftp://${BACKUP_API_KEY}/"),  # the variable holds the secret
        backup(api_key=[SECRET]),
    ],
)
def test_secrets_never_appear_in_errors(document: object) -> None:
    assert SECRET not in error(document)


def test_secrets_never_appear_in_repr() -> None:
    cfg = parse(doc())
    assert cfg.apps[0].providers[1].api_key == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)


def test_a_deeply_nested_document_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("[" * 5000, Path("config.yaml"), {})


def test_a_null_api_key_is_an_error_not_a_silent_pass_through() -> None:
    document = doc()
    document["apps"]["claude"]["providers"][1]["api_key"] = None  # `api_key:` left empty in YAML
    assert error(document) == (
        f"config.yaml: {P1}.api_key: is empty; write `api_key: none` to pass the client's own credentials "
        "on, or set a key"
    )


def test_api_key_none_passes_the_clients_credentials() -> None:
    backup_provider = parse(backup(api_key="none")).apps[0].providers[1]
    assert backup_provider.api_key is None and not backup_provider.owns_credentials


def test_an_env_value_with_control_characters_disables_the_provider_without_echoing_it() -> None:
    document = backup(api_key="${DETOUR_CFG_BAD}")
    cfg = parse_config(yaml.safe_dump(document), Path("config.yaml"), {"DETOUR_CFG_BAD": "sk-x\r\nx-evil: 1"})
    assert [p.id for p in cfg.apps[0].providers] == ["anthropic"]
    (warning,) = cfg.warnings
    assert "DETOUR_CFG_BAD" in warning and "control characters" in warning
    assert "sk-x" not in warning and "evil" not in warning


@pytest.mark.parametrize(
    ("value", "expected"),
    [("32MB", 32_000_000), ("32MiB", 32 * 1024**2), ("1GiB", 1024**3), (65536, 65536), ("512 KiB", 524288)],
)
def test_max_body_sizes(value: object, expected: int) -> None:
    assert parse(doc(max_body=value)).max_body == expected


@pytest.mark.parametrize("value", ["2GB", "1KB", "lots", True, -5])
def test_max_body_out_of_bounds(value: object) -> None:
    assert error(doc(max_body=value)).startswith("config.yaml: max_body: must be")
