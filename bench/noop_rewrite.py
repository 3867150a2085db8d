"""Baseline for the benchmark: plain mitmdump that only points each request at the mock provider.

`mitmdump -s bench/noop_rewrite.py --set noop_target=http://127.0.0.1:PORT ...` — the least work a
routing addon can do, so the difference to Detour is Detour's own cost.
"""

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader


class NoopRewrite:
    def load(self, loader: Loader) -> None:
        loader.add_option("noop_target", str, "", "Base URL every request is sent to.")

    def request(self, flow: http.HTTPFlow) -> None:
        target = ctx.options.noop_target
        if target:
            flow.request.url = target + flow.request.path

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Stream SSE like Detour does, so the streaming comparison is like for like.
        assert flow.response is not None
        if "text/event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = True


addons = [NoopRewrite()]
