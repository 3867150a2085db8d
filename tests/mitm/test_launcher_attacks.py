"""Adversarial review of the lean launcher (kept; each failed before its fix): behaviour that
`mitmdump -s addon/detour.py` has by default (no option set, so nothing for the launcher to refuse)
and the lean master silently lost.

Each test runs the same hook through mitmdump's own master (the control, which passes) and through
the lean master (which failed before `11b8538`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from masters import started
from mitmproxy import addons, dns, master
from mitmproxy.http import Request
from mitmproxy.net.dns import https_records
from mitmproxy.proxy.layers.dns import DnsResponseHook
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHeadersHook
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow
from mitmproxy.tools.dump import DumpMaster

from addon.mitm import launcher


@pytest.fixture(params=["mitmdump", "lean"])
async def either(request: pytest.FixtureRequest) -> AsyncIterator[master.Master]:
    """mitmdump's master (the control) or the lean one; their process-wide log handlers are taken
    out again afterwards, as in test_launcher.py."""
    with started(launcher.LeanMaster if request.param == "lean" else DumpMaster) as made:
        yield made


async def test_mitm_it_onboarding_is_served_as_under_mitmdump(either: master.Master) -> None:
    # `onboarding` defaults to True: in regular mode (`make run` listens on 8080 so) mitmdump answers
    # http://mitm.it/ itself with the CA download page. The lean master drops the Onboarding addon
    # without refusing anything (the option was never set), so the request goes out to the real
    # mitm.it, whose page says the traffic is NOT passing through mitmproxy.
    flow = tflow.tflow(live=True)
    flow.request = Request.make("GET", "http://mitm.it/cert/pem")
    await either.addons.handle_lifecycle(HttpRequestHook(flow))
    assert flow.response is not None, "mitm.it was not answered by the proxy"
    assert flow.response.status_code == 200
    assert b"BEGIN CERTIFICATE" in flow.response.content


async def test_reverse_mode_alt_svc_is_pointed_at_the_proxy_as_under_mitmdump(either: master.Master) -> None:
    # `keep_alt_svc_header` defaults to False: in reverse mode mitmdump rewrites the provider's
    # Alt-Svc to the proxy's own port, so a client that follows Alt-Svc stays on the proxy. The lean
    # master drops UpdateAltSvc silently and the provider's `h3=":443"` reaches the client as is
    # (checked end to end: curl through `python -m addon run` shows `alt-svc: h3=":443"`, through
    # `mitmdump -s addon/detour.py` `alt-svc: h3=":<listen port>"`).
    flow = tflow.tflow(resp=True, live=True)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.anthropic.com")
    flow.client_conn.sockname = ("127.0.0.1", 8081)
    assert flow.response is not None
    flow.response.headers["alt-svc"] = 'h3=":443"; ma=86400'
    await either.addons.handle_lifecycle(HttpResponseHeadersHook(flow))
    assert flow.response.headers["alt-svc"] == 'h3=":8081"; ma=86400'


async def test_kept_addons_run_in_mitmdumps_relative_order() -> None:
    # The lean master claims mitmdump's order for what it keeps. mitmproxy 12 moved DnsResolver after
    # ScriptLoader (so a `-s` script's dns_request can answer before the resolver queries DNS); the
    # lean master hard-coded mitmproxy 11's order (before `11b8538`: passed on 11, failed on 12).
    with started(launcher.LeanMaster) as lean:
        kept = [type(a).__name__ for a in lean.addons.chain if type(a).__name__ != "Detour"]
    mitmdump = [type(a).__name__ for a in addons.default_addons()]
    in_mitmdump = [name for name in mitmdump if name in kept]
    assert [name for name in kept if name in in_mitmdump] == in_mitmdump


async def test_dns_mode_strips_ech_and_honours_http3_off_as_under_mitmdump(either: master.Master) -> None:
    # `strip_ech` defaults to True: in `--mode dns` mitmdump strips ECH from HTTPS records (or clients
    # encrypt their ClientHello and mitmproxy can't intercept), and with `--set http3=false` (an option
    # the lean launcher keeps and accepts) it drops `h3` from their ALPN. Both live in
    # StripDnsHttpsRecords, which the lean master leaves out without refusing anything.
    either.options.update(http3=False)
    flow = tflow.tdnsflow(resp=True, live=True)
    assert flow.response is not None
    record = https_records.HTTPSRecord(1, "example.com", {})
    answer = dns.ResourceRecord.HTTPS("example.com", record)
    answer.https_ech = "AAAA"
    answer.https_alpn = (b"h3", b"h2")
    flow.response.answers = [answer]
    await either.addons.handle_lifecycle(DnsResponseHook(flow))
    assert flow.response.answers[0].https_ech is None
    assert flow.response.answers[0].https_alpn == (b"h2",)
