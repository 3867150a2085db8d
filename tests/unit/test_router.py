"""The router: queue order, open circuits, all-open fallback, probe permits and reconfiguration."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeclock import FakeClock

from addon.breaker import Permit, State
from addon.classify import Outcome, Verdict
from addon.model import App, BreakerPolicy, Config, Provider
from addon.router import Router

POLICY = BreakerPolicy(failure_threshold=3, open_for=30.0, success_threshold=2, half_open_probes=1)
FAIL = Verdict(Outcome.PROVIDER_FAILURE, "http 500", 500)
OK = Verdict(Outcome.SUCCESS, "http 200", 200)


def provider(pid: str, policy: BreakerPolicy = POLICY) -> Provider:
    return Provider(id=pid, base_url=f"https://{pid}.example", api_key=f"key-{pid}", breaker=policy)


def config(*ids: str, app: str = "claude", policy: BreakerPolicy = POLICY) -> Config:
    a = App(
        name=app,
        hosts=("api.anthropic.com",),
        providers=tuple(provider(i, policy) for i in ids),
        paths=("/v1/messages",),
    )
    return Config(source=Path("detour.yaml"), state=Path("state.db"), apps=(a,))


def ids(providers: list[Provider]) -> list[str]:
    return [p.id for p in providers]


def trip(router: Router, pid: str, app: str = "claude") -> None:
    """Record enough failures to open `pid`'s circuit."""
    for _ in range(POLICY.failure_threshold):
        permit = router.acquire(app, pid)
        assert permit is not None
        router.record_result(app, pid, permit, FAIL)
    assert router.breaker(app, pid).state() is State.OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router(clock: FakeClock) -> Router:
    return Router(config("primary", "backup", "third"), clock)


def test_queue_order_when_all_closed(router: Router) -> None:
    assert ids(router.select_providers("claude")) == ["primary", "backup", "third"]


@pytest.mark.parametrize(
    ("opened", "expected"),
    [
        (["primary"], ["backup", "third"]),
        (["backup"], ["primary", "third"]),
        (["third"], ["primary", "backup"]),
        (["primary", "backup"], ["third"]),
        (["primary", "third"], ["backup"]),
    ],
)
def test_open_circuits_are_skipped(router: Router, opened: list[str], expected: list[str]) -> None:
    for pid in opened:
        trip(router, pid)
    assert ids(router.select_providers("claude")) == expected


def test_traffic_returns_to_primary_after_its_breaker_closes(router: Router, clock: FakeClock) -> None:
    trip(router, "primary")
    assert ids(router.select_providers("claude"))[0] == "backup"
    clock.advance(POLICY.open_for)
    # Half-open: the primary is walked first again.
    assert ids(router.select_providers("claude")) == ["primary", "backup", "third"]
    for _ in range(POLICY.success_threshold):
        permit = router.acquire("claude", "primary")
        assert permit is not None and permit.probe
        router.record_result("claude", "primary", permit, OK)
    assert router.breaker("claude", "primary").state() is State.CLOSED
    assert ids(router.select_providers("claude")) == ["primary", "backup", "third"]
    permit = router.acquire("claude", "primary")
    assert permit is not None and not permit.probe


def test_all_open_returns_the_soonest_and_forces_only_it(router: Router, clock: FakeClock) -> None:
    trip(router, "primary")
    clock.advance(5)
    trip(router, "backup")
    clock.advance(5)
    trip(router, "third")
    # primary's open period ends first.
    assert ids(router.select_providers("claude")) == ["primary"]
    forced = router.acquire("claude", "primary")
    assert forced is not None and forced.forced
    assert router.acquire("claude", "backup") is None
    assert router.acquire("claude", "third") is None
    # A forced permit does not hold a probe slot and the breaker stays open.
    assert router.breaker("claude", "primary").state() is State.OPEN


def test_all_open_forced_success_starts_recovery(router: Router) -> None:
    for pid in ("primary", "backup", "third"):
        trip(router, pid)
    permit = router.acquire("claude", "primary")
    assert permit is not None and permit.forced
    router.record_result("claude", "primary", permit, OK)
    assert router.breaker("claude", "primary").state() is State.HALF_OPEN


def test_half_open_probe_is_taken_at_acquire_not_select(clock: FakeClock) -> None:
    router = Router(config("primary", "backup"), clock)
    trip(router, "primary")
    clock.advance(POLICY.open_for)
    for _ in range(3):  # selecting never consumes the probe slot
        assert ids(router.select_providers("claude")) == ["primary", "backup"]
    assert router.breaker("claude", "primary").raw.probes_in_flight == 0
    probe = router.acquire("claude", "primary")
    assert probe is not None and probe.probe and not probe.forced
    assert router.breaker("claude", "primary").raw.probes_in_flight == 1
    # The one probe is in flight: a second acquire is refused, and select skips the provider.
    assert router.acquire("claude", "primary") is None
    assert ids(router.select_providers("claude")) == ["backup"]
    # Releasing the probe (cancelled attempt) frees the slot again.
    router.release("claude", "primary", probe)
    assert router.breaker("claude", "primary").raw.probes_in_flight == 0
    again = router.acquire("claude", "primary")
    assert again is not None and again.probe


def test_failed_probe_reopens(router: Router, clock: FakeClock) -> None:
    trip(router, "primary")
    clock.advance(POLICY.open_for)
    probe = router.acquire("claude", "primary")
    assert probe is not None
    transition = router.record_result("claude", "primary", probe, FAIL)
    assert transition is not None and transition.after is State.OPEN
    assert ids(router.select_providers("claude")) == ["backup", "third"]


def test_client_errors_never_open_a_circuit(router: Router) -> None:
    bad_request = Verdict(Outcome.CLIENT_ERROR, "http 400", 400)
    for _ in range(20):
        permit = router.acquire("claude", "primary")
        assert permit is not None
        assert router.record_result("claude", "primary", permit, bad_request) is None
    assert router.breaker("claude", "primary").state() is State.CLOSED


def test_reconfigure_keeps_state_of_surviving_providers(router: Router, clock: FakeClock) -> None:
    trip(router, "primary")
    trip(router, "third")
    dropped = router.reconfigure(config("primary", "backup", "fourth"))
    assert dropped == [("claude", "third")]
    assert router.breaker("claude", "primary").state() is State.OPEN
    assert router.breaker("claude", "fourth").state() is State.CLOSED
    assert ids(router.select_providers("claude")) == ["backup", "fourth"]
    with pytest.raises(KeyError):
        router.breaker("claude", "third")


def test_reconfigure_updates_policy_of_existing_breakers(router: Router) -> None:
    stricter = BreakerPolicy(failure_threshold=1, open_for=99.0)
    router.reconfigure(config("primary", "backup", "third", policy=stricter))
    assert router.breaker("claude", "primary").policy == stricter
    permit = router.acquire("claude", "primary")
    assert permit is not None
    transition = router.record_result("claude", "primary", permit, FAIL)
    assert transition is not None and transition.after is State.OPEN


def test_reconfigure_dropping_an_app_returns_all_its_keys(router: Router) -> None:
    dropped = router.reconfigure(config("x", app="codex"))
    assert sorted(dropped) == [("claude", "backup"), ("claude", "primary"), ("claude", "third")]
    with pytest.raises(KeyError):
        router.select_providers("claude")


def test_results_for_a_provider_removed_mid_attempt_are_ignored(router: Router) -> None:
    permit = router.acquire("claude", "third")
    assert permit is not None
    router.reconfigure(config("primary", "backup"))
    assert router.record_result("claude", "third", permit, FAIL) is None
    router.release("claude", "third", permit)  # no error either


@pytest.mark.parametrize("call", ["select_providers", "status"])
def test_unknown_app_raises_key_error(router: Router, call: str) -> None:
    with pytest.raises(KeyError, match="nope"):
        getattr(router, call)("nope")


def test_acquire_for_a_vanished_provider_admits_nothing(router: Router) -> None:
    # A request in flight may still hold a provider a reload removed: it is skipped, no KeyError.
    assert router.acquire("nope", "primary") is None
    assert router.acquire("claude", "gone") is None


def test_status_reports_each_provider(router: Router, clock: FakeClock) -> None:
    trip(router, "backup")
    clock.advance(10)
    status = {s.provider: s for s in router.status("claude")}
    assert status["primary"].state is State.CLOSED and status["primary"].probe_in == 0.0
    assert status["backup"].state is State.OPEN
    assert status["backup"].consecutive_failures == POLICY.failure_threshold
    assert status["backup"].probe_in == pytest.approx(POLICY.open_for - 10)


def test_reset_closes_an_open_breaker(router: Router) -> None:
    trip(router, "primary")
    router.reset("claude", "primary")
    assert router.breaker("claude", "primary").state() is State.CLOSED
    assert ids(router.select_providers("claude"))[0] == "primary"


def test_stale_permit_after_reset_does_not_reopen(router: Router) -> None:
    permit = router.acquire("claude", "primary")
    assert isinstance(permit, Permit)
    router.reset("claude", "primary")
    for _ in range(POLICY.failure_threshold):
        router.record_result("claude", "primary", permit, FAIL)
    assert router.breaker("claude", "primary").state() is State.CLOSED


def test_busy_half_open_and_open_others_still_tries_the_soonest_open(clock: FakeClock) -> None:
    """A half-open provider with its probe taken must not make the request fail untried."""
    providers = (
        Provider("primary", "http://p", breaker=POLICY),
        Provider("backup", "http://b", breaker=POLICY),
    )
    app = App("claude", ("api.anthropic.com",), providers, ("/v1/messages*",))
    router = Router(Config(Path("c.yaml"), Path("s.db"), (app,)), clock)
    fail = Verdict(Outcome.PROVIDER_FAILURE, "http 500", 500)
    for provider in ("primary", "backup"):
        for _ in range(3):
            permit = router.acquire("claude", provider)
            assert permit is not None
            router.record_result("claude", provider, permit, fail)
    clock.advance(30)  # both half-open now
    assert router.acquire("claude", "primary") is not None  # primary's only probe slot taken
    backup_permit = router.acquire("claude", "backup")
    assert backup_permit is not None
    router.record_result("claude", "backup", backup_permit, fail)  # backup reopens for 60 s
    assert [p.id for p in router.select_providers("claude")] == ["backup"]
    forced = router.acquire("claude", "backup")
    assert forced is not None and forced.forced
