"""Loads config.yaml into the frozen `addon.model.Config`, or fails with one precise line.

The file is hand-edited by people who are not reading our code, so every problem is reported with the
file name and the exact key path (`apps.claude.providers[1].base_url`), and typos are errors rather
than silently ignored keys. Secrets are handled with care: an `api_key` value is never echoed, and a
`base_url` is only ever shown as written, before `${VAR}` expansion could splice a secret into it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import yaml

from addon.credentials import AUTH_STYLES
from addon.formats import DIALECTS, FAMILIES, family_paths
from addon.formats.translation import TRANSLATIONS, supported
from addon.model import (
    APIS,
    DEFAULT_CLIENT_ERRORS,
    DEFAULT_FAILOVER_4XX,
    Api,
    App,
    BreakerPolicy,
    Config,
    Price,
    Provider,
    RetrySame,
    StatusPolicy,
    Timeouts,
)

#: How a provider's key is sent when its entry names no `auth`, by the app's API.
DEFAULT_AUTH: dict[Api, str] = {
    "anthropic": "x-api-key",
    "openai": "bearer",
    "gemini": "x-goog-api-key",
}

_TOP_KEYS = (
    "state", "breaker", "timeouts", "switch_min_interval", "attempt_log_limit", "max_body", "apps", "prices",
)  # fmt: skip
_PRICE_KEYS = ("input", "output", "cache_read", "cache_write")
#: A price above this (dollars per million tokens) is a typo: no model costs that much.
_MAX_PRICE = 10_000.0
_APP_KEYS = (
    "hosts", "providers", "paths", "max_attempts", "timeouts", "api", "error_shape",
    "failover_statuses", "client_error_statuses", "retry_same", "continue_streams",
)  # fmt: skip
_PROVIDER_KEYS = (
    "id", "base_url", "api_key", "auth", "models", "breaker", "enabled", "api", "price_multiplier",
)  # fmt: skip
_APP_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_PROVIDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "must be a duration such as 500ms, 30s, 10m or 1h"
_SIZE = re.compile(r"\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_MIN_BODY, _MAX_BODY = 64 * 1024, 1024**3
_MAX_TIMEOUT = 3600.0
#: Timeouts that may be 0, meaning "no limit".
_MAY_BE_OFF = frozenset({"first_token"})
#: The longest wait a same-provider retry may be allowed (longer belongs to the breaker).
_MAX_RETRY_WAIT = 60.0
#: Upper bounds for the numbers a config may set: beyond them a value is a typo, not a wish.
_MAX_PERIOD = 86_400.0  # breaker periods, the switch interval
_MAX_COUNT = 1_000_000
_MAX_LOG_LIMIT = 10_000_000
#: What `api_key: none` means: no key of its own, the client's credentials pass through.
_NO_KEY = "none"
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f]")


class ConfigError(ValueError):
    """The config is unusable; `str()` is the complete one-line message for the operator."""


def parse_duration(value: object) -> float:
    """Seconds from `30s`-style text or a bare number; the message is a suffix for a key path."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_HINT}, got {_kind(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{_DURATION_HINT}, got {_show(value)}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if not math.isfinite(seconds):
            raise ValueError(f"{_DURATION_HINT}, got {_show(value)}")
        return seconds
    if not math.isfinite(value):
        raise ValueError(f"{_DURATION_HINT}, got {_show(value)}")
    if value < 0:
        raise ValueError(f"must not be negative, got {_show(value)}")
    return float(value)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read file: not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return parse_config(text, path, os.environ if env is None else env)


def parse_config(text: str, source: Path, env: Mapping[str, str]) -> Config:
    """`source` only names the file in messages and anchors `state`; nothing is read from disk."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    return _Parser(str(source), env).config(source, document)


class _StrictLoader(yaml.SafeLoader):
    """safe_load's loader, except a key repeated in one mapping is an error, not last-one-wins:
    a second `claude:` app or `api_key:` silently replacing the first is a nasty surprise."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


@dataclass(frozen=True)
class _At:
    """A position in the document, so every check can build its own fully-qualified error."""

    source: str
    path: str = ""

    def key(self, name: object) -> _At:
        return _At(self.source, f"{self.path}.{name}" if self.path else str(name))

    def item(self, label: object) -> _At:
        return _At(self.source, f"{self.path}[{label}]")

    def note(self, text: str) -> str:
        return f"{self.source}: {self.path}: {text}" if self.path else f"{self.source}: {text}"

    def error(self, problem: str) -> ConfigError:
        return ConfigError(self.note(problem))


def _kind(value: object) -> str:
    """A YAML-flavoured type name, safe to print even for a secret."""
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _kind(value)


def _mapping(at: _At, value: object, allowed: Iterable[str] | None = None) -> dict[Any, object]:
    """The mapping with null values dropped, so a key left empty (`paths:`) means "use the default"."""
    if not isinstance(value, dict):
        raise at.error(f"must be a mapping, got {_kind(value)}")
    if allowed is not None:
        known = sorted(allowed)
        for key in value:
            if key not in known:
                raise at.key(key).error(f"unknown key (expected one of: {', '.join(known)})")
    return {k: v for k, v in value.items() if v is not None}


def _required(at: _At, fields: Mapping[str, object], key: str) -> object:
    if key not in fields:
        raise at.error(f"missing required key '{key}'")
    return fields[key]


def _list(at: _At, value: object) -> list[object]:
    if not isinstance(value, list):
        raise at.error(f"must be a list, got {_kind(value)}")
    if not value:
        raise at.error("must not be empty")
    return value


def _str(at: _At, value: object) -> str:
    if not isinstance(value, str):
        raise at.error(f"must be a string, got {_kind(value)}")
    if not value:
        raise at.error("must not be empty")
    return value


def _choice(at: _At, value: object, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if _str(at, value) not in options:
        raise at.error(f"must be one of {', '.join(options)}, got {_show(value)}")
    return cast(str, value)


def _int(at: _At, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise at.error(f"must be an integer, got {_kind(value)}")
    if hi is None and value < lo:
        raise at.error(f"must be >= {lo}, got {value}")
    if hi is not None and not lo <= value <= hi:
        raise at.error(f"must be between {lo} and {hi}, got {value}")
    return value


def _size(at: _At, value: object, lo: int, hi: int) -> int:
    """Bytes from `32MB`-style text or a bare number."""
    match = (
        _SIZE.fullmatch(str(value)) if isinstance(value, int | str) and not isinstance(value, bool) else None
    )
    if match is None:
        raise at.error(f"must be a size such as 512KB, 32MB or 1GiB, got {_show(value)}")
    size = int(match.group(1)) * _UNIT_BYTES[match.group(2)]
    if not lo <= size <= hi:
        raise at.error(f"must be between {lo // 1024}KiB and {hi // 1024**3}GiB, got {_show(value)}")
    return size


def _number(at: _At, value: object, lo: float, hi: float) -> float:
    """A plain number from lo to hi (prices, multipliers): a duration or a word is a typo here."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise at.error(f"must be a number, got {_show(value) if isinstance(value, str) else _kind(value)}")
    if not lo <= value <= hi:
        raise at.error(f"must be from {lo:g} to {hi:g}, got {_show(value)}")
    return float(value)


def _bool(at: _At, value: object) -> bool:
    if not isinstance(value, bool):
        raise at.error(f"must be true or false, got {_show(value)}")
    return value


def _rate(at: _At, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise at.error(f"must be a number, got {_kind(value)}")
    if not 0 < value <= 1:
        raise at.error(f"must be > 0 and <= 1, got {_show(value)}")
    return float(value)


def _duration(at: _At, value: object, positive: bool = True, limit: float = _MAX_PERIOD) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise at.error(str(exc)) from None
    if (positive and seconds <= 0) or seconds > limit:
        lower = "> 0" if positive else ">= 0"
        raise at.error(f"must be {lower} and <= {_secs(limit)}, got {_show(value)}")
    return seconds


def _interval_or_off(at: _At, value: object) -> float:
    """Seconds, or 0 for off: `0`, `0s`, `off` and `false` (YAML reads a bare `off` as false)."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return 0.0
    try:
        seconds = None if value is True else parse_duration(value)
    except ValueError:
        seconds = None
    if seconds is None or seconds > _MAX_PERIOD:
        raise at.error(f"{_DURATION_HINT} (at most 24h), or 0 / off to disable it, got {_show(value)}")
    return seconds


def _secs(seconds: float) -> str:
    return {3600.0: "1h", _MAX_PERIOD: "24h"}.get(seconds, f"{seconds:g}s")


class _Entry(NamedTuple):
    """A provider as configured; `provider` is None when it was switched off, with `why` saying how."""

    id: str
    at: _At
    provider: Provider | None
    why: str
    price_multiplier: float = 1.0


class _Parser:
    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.root = _At(source)
        self.env = env
        self.warnings: list[str] = []
        #: Where each host was first claimed, since a host may route to only one app.
        self.owners: dict[str, _At] = {}
        #: Every provider entry's price multiplier by (app, id), enabled or not.
        self.multipliers: list[tuple[tuple[str, str], float]] = []

    def config(self, source: Path, document: object) -> Config:
        at = self.root
        top = _mapping(at, document, _TOP_KEYS)
        state = _str(at.key("state"), top.get("state", "detour.db"))
        breaker = self.breaker(at.key("breaker"), top.get("breaker", {}), BreakerPolicy())
        timeouts = self.timeouts(at.key("timeouts"), top.get("timeouts", {}), Timeouts())
        interval = _duration(
            at.key("switch_min_interval"), top.get("switch_min_interval", 10.0), False, _MAX_PERIOD
        )
        log_limit = _int(
            at.key("attempt_log_limit"), top.get("attempt_log_limit", 10_000), 100, _MAX_LOG_LIMIT
        )
        max_body = _size(at.key("max_body"), top.get("max_body", "32MiB"), _MIN_BODY, _MAX_BODY)
        prices = self.prices(at.key("prices"), top.get("prices", {}))
        apps_at = at.key("apps")
        apps = _mapping(apps_at, _required(at, top, "apps"))
        if not apps:
            raise apps_at.error("must not be empty")
        parsed = tuple(
            self.app(apps_at.key(name), name, spec, breaker, timeouts) for name, spec in apps.items()
        )
        return Config(
            source=source,
            state=Path(os.path.abspath(source.parent / Path(state).expanduser())),
            apps=parsed,
            breaker=breaker,
            timeouts=timeouts,
            switch_min_interval=interval,
            attempt_log_limit=log_limit,
            max_body=max_body,
            prices=prices,
            price_multipliers=tuple(self.multipliers),
            warnings=tuple(self.warnings),
        )

    def breaker(self, at: _At, value: object, base: BreakerPolicy) -> BreakerPolicy:
        """Validates the keys present and merges them over `base`, so overrides may be partial."""
        fields = _mapping(at, value, [f.name for f in dataclasses.fields(BreakerPolicy)])
        changes: dict[str, Any] = {}
        for name, raw in fields.items():
            if name == "error_rate":
                changes[name] = _rate(at.key(name), raw)
            elif name in ("window", "open_for", "max_open_for"):
                changes[name] = _duration(at.key(name), raw, limit=_MAX_PERIOD)
            elif name == "recovery_probe":
                changes[name] = _interval_or_off(at.key(name), raw)
            else:
                changes[name] = _int(at.key(name), raw, 1, _MAX_COUNT)
        merged = dataclasses.replace(base, **changes)
        if merged.max_open_for < merged.open_for:
            raise at.key("max_open_for").error(
                f"must be >= open_for ({_secs(merged.open_for)}), got {_secs(merged.max_open_for)}"
            )
        return merged

    def timeouts(self, at: _At, value: object, base: Timeouts) -> Timeouts:
        fields = _mapping(at, value, [f.name for f in dataclasses.fields(Timeouts)])
        changes = {
            # first_token may be 0: no limit (a model that is silent for long before it streams)
            name: _duration(at.key(name), raw, name not in _MAY_BE_OFF, limit=_MAX_TIMEOUT)
            for name, raw in fields.items()
        }
        return dataclasses.replace(base, **changes)

    def retry_same(self, at: _At, value: object) -> RetrySame:
        fields = _mapping(at, value, [f.name for f in dataclasses.fields(RetrySame)])
        changes: dict[str, Any] = {}
        for name, raw in fields.items():
            if name == "attempts":
                changes[name] = _int(at.key(name), raw, 0, 5)
            else:
                changes[name] = _duration(at.key(name), raw, False, limit=_MAX_RETRY_WAIT)
        return dataclasses.replace(RetrySame(), **changes)

    def app(self, at: _At, name: object, value: object, breaker: BreakerPolicy, timeouts: Timeouts) -> App:
        if not isinstance(name, str) or not _APP_NAME.fullmatch(name):
            raise at.error("app name must match [a-z][a-z0-9_-]*")
        spec = _mapping(at, value, _APP_KEYS)
        hosts = self.hosts(at.key("hosts"), _required(at, spec, "hosts"))
        shape = self.api(at, spec, hosts)
        paths = family_paths(shape)
        if "paths" in spec:
            paths_at = at.key("paths")
            paths = tuple(
                _url_path(paths_at.item(i), p) for i, p in enumerate(_list(paths_at, spec["paths"]))
            )
        queue = self.providers(at.key("providers"), _required(at, spec, "providers"), shape, breaker, name)
        return App(
            name=name,
            hosts=hosts,
            providers=queue,
            paths=paths,
            max_attempts=_int(at.key("max_attempts"), spec.get("max_attempts", 3), 1, 10),
            timeouts=self.timeouts(at.key("timeouts"), spec.get("timeouts", {}), timeouts),
            statuses=self.statuses(at, spec),
            api=shape,
            retry_same=self.retry_same(at.key("retry_same"), spec.get("retry_same", {})),
            continue_streams=_bool(at.key("continue_streams"), spec.get("continue_streams", True)),
        )

    def api(self, at: _At, spec: Mapping[str, object], hosts: tuple[str, ...]) -> Api:
        """`api`, or its older name `error_shape`, or a guess from the hosts."""
        if "api" in spec and "error_shape" in spec:
            raise at.key("error_shape").error("is the old name of 'api': give only one of them")
        key = "api" if "api" in spec else "error_shape"
        if key not in spec:
            return _guess_api(hosts)
        return cast(Api, _choice(at.key(key), spec[key], APIS))

    def hosts(self, at: _At, value: object) -> tuple[str, ...]:
        hosts: list[str] = []
        for i, raw in enumerate(_list(at, value)):
            host_at = at.item(i)
            host = _str(host_at, raw).lower().rstrip(".")
            if not _HOST.fullmatch(host):
                raise host_at.error(
                    f"must be a hostname like api.anthropic.com (no scheme, port or path), got {_show(raw)}"
                )
            if host in self.owners:
                raise host_at.error(f"duplicate host {host!r} (also at {self.owners[host].path})")
            self.owners[host] = host_at
            hosts.append(host)
        return tuple(hosts)

    def statuses(self, at: _At, spec: Mapping[str, object]) -> StatusPolicy:
        def listed(key: str, hi: int) -> frozenset[int]:
            key_at = at.key(key)
            return frozenset(_int(key_at.item(i), s, 400, hi) for i, s in enumerate(_list(key_at, spec[key])))

        client = listed("client_error_statuses", 499) if "client_error_statuses" in spec else None
        extra = listed("failover_statuses", 599) if "failover_statuses" in spec else frozenset()
        if client is not None and extra & client:
            clash = min(extra & client)
            raise at.key("failover_statuses").error(f"{clash} is also listed in client_error_statuses")
        return StatusPolicy(
            client_errors=DEFAULT_CLIENT_ERRORS if client is None else client,
            failover=DEFAULT_FAILOVER_4XX | extra,
        )

    def provider_api(self, at: _At, value: object, shape: Api) -> str | None:
        """The provider's own dialect, when it is another family than the app's and Detour can
        translate every dialect of the app's family that has a translation to it."""
        if value is None:
            return None
        api = _choice(at, value, DIALECTS)
        clients = [d.name for d in FAMILIES[shape]]
        if DIALECTS[api].family == shape and not any((c, api) in TRANSLATIONS for c in clients):
            return None  # the app's own family: the request's path picks the dialect, as for any provider
        if not any(supported(c, api) for c in clients):
            ways = ", ".join(f"{c} -> {p}" for c, p in TRANSLATIONS)
            raise at.error(f"Detour can't translate {shape} requests to {api} yet (it can: {ways})")
        return api

    def providers(
        self, at: _At, value: object, shape: Api, breaker: BreakerPolicy, app: str
    ) -> tuple[Provider, ...]:
        entries: list[_Entry] = []
        for i, raw in enumerate(_list(at, value)):
            entry = self.provider(at.item(i), raw, shape, breaker)
            earlier = next((e for e in entries if e.id == entry.id), None)
            if earlier is not None:
                problem = f"duplicate provider id {entry.id!r} (also at {earlier.at.path})"
                raise entry.at.key("id").error(problem)
            entries.append(entry)
            self.multipliers.append(((app, entry.id), entry.price_multiplier))
        enabled = tuple(e.provider for e in entries if e.provider is not None)
        if not enabled:
            reasons = "; ".join(f"{e.id}: {e.why}" for e in entries)
            raise at.error(f"every provider is disabled ({reasons})")
        for e in entries:
            if e.provider is None and e.why != "enabled is false":
                self.warnings.append(f"{e.at.source}: {e.at.path} ({e.id}): disabled, {e.why}")
        return enabled

    def provider(self, at: _At, value: object, shape: Api, breaker: BreakerPolicy) -> _Entry:
        if isinstance(value, dict) and "api_key" in value and value["api_key"] in (None, ""):
            # An empty key would silently send the client's own credentials to this provider.
            raise at.key("api_key").error(
                "is empty; write `api_key: none` to pass the client's own credentials on, or set a key"
            )
        spec = _mapping(at, value, _PROVIDER_KEYS)
        provider_id = _str(at.key("id"), _required(at, spec, "id"))
        if not _PROVIDER_ID.fullmatch(provider_id):
            raise at.key("id").error(f"must match [A-Za-z0-9][A-Za-z0-9_.-]*, got {_show(provider_id)}")
        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            raise at.key("enabled").error(f"must be true or false, got {_kind(enabled)}")
        url_at = at.key("base_url")
        raw_url = _str(url_at, _required(at, spec, "base_url"))
        base_url, missing, unsafe = self.expand(url_at, raw_url)
        if not missing and not unsafe:
            base_url = _check_url(url_at, base_url, raw_url)
        api_key = None
        if "api_key" in spec and str(spec["api_key"]).strip().lower() != _NO_KEY:
            key_at = at.key("api_key")
            raw_key = _str(key_at, spec["api_key"])
            if _UNSAFE_CHARS.search(_VAR_REF.sub("", raw_key)):
                raise key_at.error("must not contain spaces or control characters")
            api_key, missing_key, unsafe_key = self.expand(key_at, raw_key)
            missing += [name for name in missing_key if name not in missing]
            unsafe += [name for name in unsafe_key if name not in unsafe]
        api = self.provider_api(at.key("api"), spec.get("api"), shape)
        other_family = api is not None and DIALECTS[api].family != shape
        if other_family and ("api_key" not in spec or str(spec["api_key"]).strip().lower() == _NO_KEY):
            # The client's credentials are for its own API's vendor: never hand them to another.
            raise at.key("api_key").error(
                f"is required for a provider with api: {api} (the client's own credentials are for "
                f"{shape}); a local server that needs none takes any value"
            )
        auth = DEFAULT_AUTH[DIALECTS[api].family if api else shape]  # type: ignore[index]
        if "auth" in spec:
            auth = _choice(at.key("auth"), spec["auth"], AUTH_STYLES)
        provider = Provider(
            id=provider_id,
            base_url=base_url,
            api_key=api_key,
            auth=auth,
            models=self.models(at.key("models"), spec.get("models", {})),
            breaker=self.breaker(at.key("breaker"), spec.get("breaker", {}), breaker),
            api=api,
            price_multiplier=_number(at.key("price_multiplier"), spec.get("price_multiplier", 1.0), 0, 1000),
        )
        entry = _Entry(provider_id, at, None, "", provider.price_multiplier)
        if not enabled:
            return entry._replace(why="enabled is false")
        if missing:
            plural = "s" if len(missing) > 1 else ""
            verb = "are" if len(missing) > 1 else "is"
            why = f"environment variable{plural} {', '.join(missing)} {verb} not set"
            return entry._replace(why=why)
        if unsafe:
            plural = "s" if len(unsafe) > 1 else ""
            verb = "contain" if plural else "contains"
            why = f"environment variable{plural} {', '.join(unsafe)} {verb} spaces or control characters"
            return entry._replace(why=why)
        return entry._replace(provider=provider)

    def prices(self, at: _At, value: object) -> tuple[tuple[str, Price], ...]:
        """`prices:` maps model globs to dollars per million tokens, first match wins."""
        entries = []
        for pattern, spec in _mapping(at, value).items():
            entry_at = at.item(repr(pattern))
            if not isinstance(pattern, str) or not pattern:
                raise entry_at.error(f"model pattern must be a non-empty string, got {_kind(pattern)}")
            fields = _mapping(entry_at, spec, _PRICE_KEYS)

            def dollars(key: str, fields: Mapping[str, object] = fields, at: _At = entry_at) -> float | None:
                return _number(at.key(key), fields[key], 0, _MAX_PRICE) if key in fields else None

            price_in, price_out = dollars("input"), dollars("output")
            if price_in is None or price_out is None:
                missing = " and ".join(k for k in ("input", "output") if k not in fields)
                raise entry_at.error(f"needs {missing} (dollars per million tokens)")
            price = Price(price_in, price_out, dollars("cache_read"), dollars("cache_write"))
            entries.append((pattern, price))
        return tuple(entries)

    def models(self, at: _At, value: object) -> tuple[tuple[str, str], ...]:
        pairs = []
        for pattern, target in _mapping(at, value).items():
            entry_at = at.item(repr(pattern))
            if not isinstance(pattern, str) or not pattern:
                raise entry_at.error(f"model pattern must be a non-empty string, got {_kind(pattern)}")
            pairs.append((pattern, _str(entry_at, target)))
        return tuple(pairs)

    def expand(self, at: _At, raw: str) -> tuple[str, list[str], list[str]]:
        """`${VAR}` substituted from the environment, plus the names that were unset or empty, and
        those whose value holds a space or control character (it would inject into a request).

        Never echoes the value: for `api_key` it is the secret, and for anything else it may hold one.
        """
        if "${" in _VAR_REF.sub("", raw):
            raise at.error("malformed ${...} reference, expected ${NAME} with NAME of letters, digits and _")
        missing: list[str] = []
        unsafe: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            value = self.env.get(name, "")
            if not value and name not in missing:
                missing.append(name)
            elif _UNSAFE_CHARS.search(value) and name not in unsafe:
                unsafe.append(name)
            return value

        return _VAR_REF.sub(substitute, raw), missing, unsafe


def _check_url(at: _At, url: str, raw: str) -> str:
    """The URL with trailing slashes dropped, since the shell appends the client's path to it.

    Problems are shown with the URL as written (`raw`), never the expanded one.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise at.error(f"must be an http:// or https:// URL, got {_show(raw)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise at.error(f"must be an http:// or https:// URL, got {_show(raw)}")
    if parts.username is not None or parts.password is not None:
        raise at.error("must not contain user:password@ credentials, use api_key")
    if "?" in url or "#" in url:
        raise at.error(f"must not have a query string or fragment, got {_show(raw)}")
    if not url.isascii():
        raise at.error(f"must be ASCII (write a host name in its xn-- form), got {_show(raw)}")
    if _UNSAFE_CHARS.search(url):
        raise at.error(f"must not contain spaces or control characters, got {_show(raw)}")
    return url.rstrip("/")


def _url_path(at: _At, value: object) -> str:
    if not _str(at, value).startswith("/"):
        raise at.error(f"must start with '/', got {_show(value)}")
    return cast(str, value)


def _guess_api(hosts: Iterable[str]) -> Api:
    hosts = tuple(hosts)
    if any("anthropic" in h for h in hosts):
        return "anthropic"
    if any("googleapis" in h for h in hosts):
        return "gemini"
    return "openai"
