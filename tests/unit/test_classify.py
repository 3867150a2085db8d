"""The failure classifier as tables: status/headers/error kind in, Verdict out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from fakeclock import START
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.classify import (
    MAX_RETRY_AFTER,
    RETRY_AFTER_STATUSES,
    ErrorKind,
    Outcome,
    Verdict,
    classify_error,
    classify_status,
    parse_retry_after,
)
from addon.model import DEFAULT_CLIENT_ERRORS, DEFAULT_FAILOVER_4XX, StatusPolicy

NOW = START
DEFAULT = StatusPolicy()

S = Outcome.SUCCESS
C = Outcome.CLIENT_ERROR
P = Outcome.PROVIDER_FAILURE


def http_date(ts: float) -> str:
    """IMF-fixdate, the preferred HTTP-date form: 'Tue, 14 Nov 2023 22:15:20 GMT'."""
    return formatdate(ts, usegmt=True)


def rfc850_date(ts: float) -> str:
    """The obsolete RFC 850 form: 'Tuesday, 14-Nov-23 22:15:20 GMT'."""
    return time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(ts))


def asctime_date(ts: float) -> str:
    """The obsolete asctime form, which has no zone and is defined as GMT: 'Tue Nov 14 22:15:20 2023'."""
    t = time.gmtime(ts)
    return time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)


# --- status table ---------------------------------------------------------------------------------

RA = {"Retry-After": "120"}

STATUS_TABLE = [
    # 2xx: success, Retry-After irrelevant
    (200, {}, S, None),
    (201, {}, S, None),
    (204, {}, S, None),
    (200, RA, S, None),
    (206, {}, S, None),
    # 3xx: never followed (the request carries a key), never a success
    (301, {}, P, None),
    (302, {}, P, None),
    (304, {}, P, None),
    (307, {}, P, None),
    # the client's own problem: returned as is, neutral
    (400, {}, C, None),
    (405, {}, C, None),
    (406, {}, C, None),
    (413, {}, C, None),
    (414, {}, C, None),
    (415, {}, C, None),
    (422, {}, C, None),
    (400, RA, C, None),  # Retry-After never read on a client error
    # 4xx that mean "this provider can't serve this now"
    (401, {}, P, None),
    (402, {}, P, None),
    (403, {}, P, None),
    (404, {}, P, None),
    (408, {}, P, None),
    (409, {}, P, None),
    (429, {}, P, None),
    # other 4xx default to the client's problem
    (410, {}, C, None),
    (411, {}, C, None),
    (412, {}, C, None),
    (416, {}, C, None),
    (418, {}, C, None),
    (421, {}, C, None),
    (428, {}, C, None),
    (431, {}, C, None),
    (451, {}, C, None),
    (499, {}, C, None),
    # every 5xx fails over
    (500, {}, P, None),
    (501, {}, P, None),
    (502, {}, P, None),
    (503, {}, P, None),
    (504, {}, P, None),
    (505, {}, P, None),
    (520, {}, P, None),
    (529, {}, P, None),
    (599, {}, P, None),
    # Retry-After is read only for 429 / 503 / 529
    (429, RA, P, 120.0),
    (503, RA, P, 120.0),
    (529, RA, P, 120.0),
    (500, RA, P, None),
    (502, RA, P, None),
    (504, RA, P, None),
    (401, RA, P, None),
    (403, RA, P, None),
    (408, RA, P, None),
    (409, RA, P, None),
    (418, RA, C, None),
    (429, {"retry-after-ms": "2500"}, P, 2.5),
    (503, {"retry-after-ms": "2500"}, P, 2.5),
    (500, {"retry-after-ms": "2500"}, P, None),
]


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "retry_after"),
    STATUS_TABLE,
    ids=[f"{s}-{','.join(h) or 'nohdr'}" for s, h, _, _ in STATUS_TABLE],
)
def test_classify_status_table(
    status: int, headers: dict[str, str], outcome: Outcome, retry_after: float | None
) -> None:
    v = classify_status(status, headers, DEFAULT, NOW)
    assert v.outcome is outcome
    assert v.status == status
    assert v.retry_after == retry_after
    assert v.fails_over is outcome.fails_over
    assert str(status) in v.reason


def test_default_sets_match_spec() -> None:
    assert frozenset({400, 405, 406, 413, 414, 415, 422}) == DEFAULT_CLIENT_ERRORS
    assert frozenset({401, 402, 403, 404, 408, 409, 429}) == DEFAULT_FAILOVER_4XX
    assert frozenset({429, 503, 529}) == RETRY_AFTER_STATUSES
    assert MAX_RETRY_AFTER == 24 * 3600


@pytest.mark.parametrize("status", range(500, 600))
def test_every_5xx_is_a_provider_failure(status: int) -> None:
    assert classify_status(status, {}, DEFAULT, NOW).outcome is P


@pytest.mark.parametrize("status", range(200, 300))
def test_every_2xx_is_success(status: int) -> None:
    v = classify_status(status, RA, DEFAULT, NOW)
    assert v.outcome is S
    assert v.retry_after is None


@pytest.mark.parametrize("status", range(300, 400))
def test_every_3xx_is_a_provider_failure_never_followed(status: int) -> None:
    v = classify_status(status, RA, DEFAULT, NOW)
    assert v.outcome is P and v.fails_over
    assert v.reason == f"http {status} (redirects are not followed)"


@pytest.mark.parametrize("status", range(400, 500))
def test_every_4xx_is_failover_or_client_error(status: int) -> None:
    expected = P if status in DEFAULT_FAILOVER_4XX else C
    assert classify_status(status, {}, DEFAULT, NOW).outcome is expected


# --- per-app overrides ----------------------------------------------------------------------------

OVERRIDE_TABLE = [
    # 404 demoted to a client error (e.g. a path only the primary serves)
    ("404-as-client", StatusPolicy(client_errors=DEFAULT_CLIENT_ERRORS | {404}), 404, {}, C, None),
    # the rest of the defaults are untouched by that override
    ("404-override-keeps-401", StatusPolicy(client_errors=DEFAULT_CLIENT_ERRORS | {404}), 401, {}, P, None),
    ("404-override-keeps-400", StatusPolicy(client_errors=DEFAULT_CLIENT_ERRORS | {404}), 400, {}, C, None),
    # 410 promoted to a failover status
    ("410-failover", StatusPolicy(failover=DEFAULT_FAILOVER_4XX | {410}), 410, {}, P, None),
    # 400 failing over once removed from client_errors and named in failover
    ("400-failover", StatusPolicy(client_errors=frozenset(), failover=frozenset({400})), 400, {}, P, None),
    # client_errors wins when a status is in both sets
    ("both-sets-client-wins", StatusPolicy(failover=DEFAULT_FAILOVER_4XX | {400}), 400, {}, C, None),
    # a 5xx named as client error is neutral, and its Retry-After is not read
    ("503-as-client", StatusPolicy(client_errors=frozenset({503})), 503, RA, C, None),
    ("503-as-client-keeps-500", StatusPolicy(client_errors=frozenset({503})), 500, {}, P, None),
    # 429 demoted: no Retry-After either
    ("429-as-client", StatusPolicy(client_errors=DEFAULT_CLIENT_ERRORS | {429}), 429, RA, C, None),
    # empty failover set: the named 4xx become client errors, 5xx still fail over
    ("no-4xx-failover-401", StatusPolicy(failover=frozenset()), 401, {}, C, None),
    ("no-4xx-failover-429", StatusPolicy(failover=frozenset()), 429, RA, C, None),
    ("no-4xx-failover-529", StatusPolicy(failover=frozenset()), 529, RA, P, 120.0),
    # an empty client_errors set: unnamed 4xx still default to client error
    ("no-client-errors-422", StatusPolicy(client_errors=frozenset()), 422, {}, C, None),
    # 2xx stays success whatever the policy names
    ("200-untouched", StatusPolicy(failover=DEFAULT_FAILOVER_4XX | {410}), 200, {}, S, None),
]


@pytest.mark.parametrize(
    ("policy", "status", "headers", "outcome", "retry_after"),
    [row[1:] for row in OVERRIDE_TABLE],
    ids=[row[0] for row in OVERRIDE_TABLE],
)
def test_status_policy_overrides(
    policy: StatusPolicy,
    status: int,
    headers: dict[str, str],
    outcome: Outcome,
    retry_after: float | None,
) -> None:
    v = classify_status(status, headers, policy, NOW)
    assert v.outcome is outcome
    assert v.retry_after == retry_after


# --- Retry-After ----------------------------------------------------------------------------------

RETRY_AFTER_TABLE = [
    # absent
    ("absent", {}, None),
    ("unrelated-header", {"X-Retry": "5"}, None),
    # delay-seconds
    ("seconds", {"Retry-After": "120"}, 120.0),
    ("seconds-zero", {"Retry-After": "0"}, 0.0),
    ("seconds-whitespace", {"Retry-After": "  30 "}, 30.0),
    ("seconds-fraction", {"Retry-After": "1.5"}, 1.5),
    ("seconds-24h-exactly", {"Retry-After": "86400"}, 86400.0),
    # case-insensitive names
    ("lower", {"retry-after": "7"}, 7.0),
    ("upper", {"RETRY-AFTER": "7"}, 7.0),
    ("mixed", {"rEtRy-AfTeR": "7"}, 7.0),
    # HTTP-date, relative to the injected now
    ("imf-date", {"Retry-After": http_date(NOW + 120)}, 120.0),
    ("imf-date-lower-name", {"retry-after": http_date(NOW + 3600)}, 3600.0),
    ("rfc850-date", {"Retry-After": rfc850_date(NOW + 120)}, 120.0),
    ("date-now", {"Retry-After": http_date(NOW)}, 0.0),
    ("date-past", {"Retry-After": http_date(NOW - 3600)}, 0.0),
    ("date-far-past", {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
    ("date-24h-exactly", {"Retry-After": http_date(NOW + 86400)}, 86400.0),
    ("date-over-24h", {"Retry-After": http_date(NOW + 86401)}, None),
    ("date-far-future", {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, None),
    # retry-after-ms, preferred when present
    ("ms", {"retry-after-ms": "1500"}, 1.5),
    ("ms-mixed-case", {"Retry-After-Ms": "250"}, 0.25),
    ("ms-upper", {"RETRY-AFTER-MS": "250"}, 0.25),
    ("ms-zero", {"retry-after-ms": "0"}, 0.0),
    ("ms-preferred", {"Retry-After": "120", "retry-after-ms": "1500"}, 1.5),
    ("ms-preferred-over-date", {"Retry-After": http_date(NOW + 600), "Retry-After-Ms": "2000"}, 2.0),
    ("ms-garbage-falls-back", {"Retry-After": "120", "retry-after-ms": "soon"}, 120.0),
    ("ms-garbage-alone", {"retry-after-ms": "soon"}, None),
    ("ms-negative", {"retry-after-ms": "-1"}, None),
    ("ms-over-24h", {"retry-after-ms": str(25 * 3600 * 1000)}, None),
    ("ms-24h-exactly", {"retry-after-ms": str(24 * 3600 * 1000)}, 86400.0),
    # garbage, negative, huge -> None
    ("empty", {"Retry-After": ""}, None),
    ("blank", {"Retry-After": "   "}, None),
    ("words", {"Retry-After": "soon"}, None),
    ("number-with-unit", {"Retry-After": "120s"}, None),
    ("negative", {"Retry-After": "-5"}, None),
    ("negative-fraction", {"Retry-After": "-0.5"}, None),
    ("over-24h", {"Retry-After": "86401"}, None),
    ("huge", {"Retry-After": "99999999999999999999"}, None),
    ("exp-overflow", {"Retry-After": "1e400"}, None),
    ("nan", {"Retry-After": "nan"}, None),
    ("inf", {"Retry-After": "inf"}, None),
    ("neg-inf", {"Retry-After": "-inf"}, None),
    ("hex", {"Retry-After": "0x10"}, None),
    ("bad-date", {"Retry-After": "Tue, 99 Nov 2023 99:99:99 GMT"}, None),
    ("bad-zone", {"Retry-After": "Tue, 14 Nov 2023 22:15:20 +9999"}, None),
    ("half-date", {"Retry-After": "Tue, 14 Nov"}, None),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [row[1:] for row in RETRY_AFTER_TABLE],
    ids=[row[0] for row in RETRY_AFTER_TABLE],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)
    # and the same through the classifier, for each status that reads it
    for status in sorted(RETRY_AFTER_STATUSES):
        v = classify_status(status, headers, DEFAULT, NOW)
        assert v.outcome is P
        assert v.retry_after == got


def test_http_date_is_relative_to_injected_now() -> None:
    headers = {"Retry-After": http_date(NOW + 300)}
    assert parse_retry_after(headers, NOW) == 300.0
    assert parse_retry_after(headers, NOW + 100) == 200.0
    assert parse_retry_after(headers, NOW + 300) == 0.0
    assert parse_retry_after(headers, NOW + 1000) == 0.0  # in the past: no wait, never negative


def test_asctime_date_in_utc_process() -> None:
    # In a process whose local zone is UTC the obsolete asctime form parses to the right delay.
    # (See test_asctime_date_is_gmt_whatever_the_local_zone for other zones.)
    if time.localtime(NOW).tm_gmtoff != 0:
        pytest.skip("local zone is not UTC")
    assert parse_retry_after({"Retry-After": asctime_date(NOW + 120)}, NOW) == 120.0


def test_retry_after_accepts_case_insensitive_mapping() -> None:
    """mitmproxy's Headers is case-insensitive for `get`; the parser must work with it too."""
    from mitmproxy.http import Headers

    headers = Headers([(b"Retry-After", b"42"), (b"Retry-After-Ms", b"1000")])
    assert parse_retry_after(headers, NOW) == 1.0
    assert parse_retry_after(Headers([(b"RETRY-AFTER", b"42")]), NOW) == 42.0
    assert classify_status(429, Headers([(b"retry-after", b"42")]), DEFAULT, NOW).retry_after == 42.0


@pytest.fixture
def non_utc_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the test with the process's local zone at UTC-5 (POSIX TZ string: no tz database needed)."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    try:
        assert time.localtime(NOW).tm_gmtoff == -5 * 3600
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("non_utc_zone")
def test_imf_date_is_independent_of_the_local_zone() -> None:
    assert parse_retry_after({"Retry-After": http_date(NOW + 120)}, NOW) == 120.0
    assert parse_retry_after({"Retry-After": rfc850_date(NOW + 120)}, NOW) == 120.0


@pytest.mark.usefixtures("non_utc_zone")
@pytest.mark.parametrize(
    "value",
    [asctime_date(NOW + 120), formatdate(NOW + 120)[:-6] + " -0000"],
    ids=["asctime", "minus-0000"],
)
def test_asctime_date_is_gmt_whatever_the_local_zone(value: str) -> None:
    assert parse_retry_after({"Retry-After": value}, NOW) == 120.0


@pytest.mark.parametrize(
    "value",
    [
        "Tue, 14 Nov 99999999999999999999 22:15:20 GMT",
        "Tue, 14 Nov 2023 22:15:20 +99999999999999999999",
    ],
    ids=["huge-year", "huge-zone"],
)
def test_retry_after_overflowing_date_is_none(value: str) -> None:
    assert parse_retry_after({"Retry-After": value}, NOW) is None
    assert classify_status(429, {"Retry-After": value}, DEFAULT, NOW).retry_after is None


# Dates built from plausible components (years within datetime's range, zones within +-23:59).
_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
datelike = st.builds(
    "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
    st.sampled_from(_WEEKDAYS),
    st.integers(0, 40),
    st.sampled_from([*_MONTHS, "Foo"]),
    st.integers(1, 9999),
    st.integers(0, 30),
    st.integers(0, 70),
    st.integers(0, 70),
    st.one_of(
        st.sampled_from(["GMT", "UT", "UTC", "EST", "PDT", "Z", ""]),
        st.builds("{}{:04d}".format, st.sampled_from("+-"), st.integers(0, 2359)),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(st.text(max_size=40), datelike, st.floats(allow_nan=True).map(str)),
    ms=st.one_of(st.none(), st.text(max_size=12), st.integers(-(10**12), 10**12).map(str)),
    now=st.floats(0, 4e9),
)
def test_parse_retry_after_never_raises_and_is_bounded(value: str, ms: str | None, now: float) -> None:
    headers = {"Retry-After": value}
    if ms is not None:
        headers["retry-after-ms"] = ms
    got = parse_retry_after(headers, now)
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER


# --- error kinds ----------------------------------------------------------------------------------

ERROR_TABLE = [
    (ErrorKind.CONNECT, Outcome.CONNECT_FAILURE),
    (ErrorKind.RESET, Outcome.CONNECT_FAILURE),
    (ErrorKind.TIMEOUT_CONNECT, Outcome.TIMEOUT),
    (ErrorKind.TIMEOUT_FIRST_BYTE, Outcome.TIMEOUT),
    (ErrorKind.TIMEOUT_IDLE, Outcome.TIMEOUT),
    (ErrorKind.TIMEOUT_FIRST_TOKEN, Outcome.TIMEOUT),
    (ErrorKind.STREAM_ERROR, Outcome.PROVIDER_FAILURE),
    (ErrorKind.TOO_LARGE, Outcome.PROVIDER_FAILURE),
    (ErrorKind.UNREADABLE, Outcome.PROVIDER_FAILURE),
]


def test_error_table_covers_every_kind() -> None:
    assert {k for k, _ in ERROR_TABLE} == set(ErrorKind)


@pytest.mark.parametrize(("kind", "outcome"), ERROR_TABLE, ids=[k.value for k, _ in ERROR_TABLE])
def test_classify_error(kind: ErrorKind, outcome: Outcome) -> None:
    v = classify_error(kind)
    assert v.outcome is outcome
    assert v.status is None
    assert v.retry_after is None
    assert v.reason == kind.value
    assert v.fails_over  # every error kind fails over and counts

    detailed = classify_error(kind, "connection refused")
    assert detailed.outcome is outcome
    assert detailed.reason == f"{kind.value}: connection refused"


# --- Outcome properties ---------------------------------------------------------------------------

OUTCOME_TABLE = [
    # outcome, fails_over, counts_as_failure
    (Outcome.SUCCESS, False, False),
    (Outcome.CLIENT_ERROR, False, False),
    (Outcome.PROVIDER_FAILURE, True, True),
    (Outcome.CONNECT_FAILURE, True, True),
    (Outcome.TIMEOUT, True, True),
    # too long for this provider's context: another may take it, and it's not this one's fault
    (Outcome.CONTEXT_EXCEEDED, True, False),
]


def test_outcome_table_covers_every_outcome() -> None:
    assert {o for o, _, _ in OUTCOME_TABLE} == set(Outcome)


@pytest.mark.parametrize(
    ("outcome", "fails_over", "counts"), OUTCOME_TABLE, ids=[o.value for o, _, _ in OUTCOME_TABLE]
)
def test_outcome_properties(outcome: Outcome, fails_over: bool, counts: bool) -> None:
    assert outcome.fails_over is fails_over
    assert outcome.counts_as_failure is counts
    assert Verdict(outcome, "r").fails_over is fails_over
