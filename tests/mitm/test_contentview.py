"""The "Detour" content view inside mitmproxy itself (11: `View`, 12: `Contentview`): registered when
the addon loads, chosen first for a model API's answer, left alone for everything else, removed
when the addon is done. Rendered through mitmproxy's own content-view machinery, as mitmweb and the
console render it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mitmproxy import contentviews, http
from mitmproxy.test import taddons, tflow, tutils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_review import ANTHROPIC_TOOL_STREAM
from test_usage import CHAT_BODY

from addon.mitm import contentview
from addon.mitm.addon import Detour

MITMPROXY_12 = hasattr(contentviews, "Contentview")


def answered(path: str, body: bytes, content_type: str, status: int = 200) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(path=path.encode()))
    flow.response = http.Response.make(status, body, {"content-type": content_type})
    return flow


def rendered(flow: http.HTTPFlow, message: http.Message) -> tuple[str, str]:
    """(the view mitmproxy picked by itself, the text it shows)."""
    if MITMPROXY_12:
        result = contentviews.prettify_message(message, flow)  # type: ignore[arg-type]
        return str(result.view_name), result.text
    description, lines, _ = contentviews.get_message_content_view("auto", message, flow)
    text = "\n".join("".join(str(chunk) for _, chunk in line) for line in lines)
    return description, text


def test_the_addon_registers_the_view_once_and_removes_it_where_mitmproxy_can(tmp_path: Path) -> None:
    addon = Detour()
    with taddons.context(addon):
        assert contentviews.get(contentview.NAME) is not None
        contentview.register()  # a script reload: still one view of that name
        if not MITMPROXY_12:
            assert [v.name for v in contentviews.views].count(contentview.NAME) == 1
    contentview.unregister()
    # mitmproxy 12 has no removal: the view stays, harmless (it renders model answers only)
    assert (contentviews.get(contentview.NAME) is None) is not MITMPROXY_12


def test_a_model_stream_opens_in_the_detour_view() -> None:
    contentview.register()
    try:
        flow = answered("/v1/messages?beta=true", ANTHROPIC_TOOL_STREAM, "text/event-stream")
        assert flow.response is not None
        view, text = rendered(flow, flow.response)
    finally:
        contentview.unregister()
    assert view == "Detour"
    assert text.splitlines()[0] == "anthropic stream, 14 events: complete"
    assert '── tool call get_weather (toolu_1) ──' in text and "content_block_delta" not in text


def test_a_whole_answer_opens_in_it_too_but_requests_and_other_apis_keep_their_views() -> None:
    contentview.register()
    try:
        flow = answered("/v1/chat/completions", json.dumps(CHAT_BODY).encode(), "application/json")
        assert flow.response is not None
        assert rendered(flow, flow.response)[0] == "Detour"
        other = answered("/v1/models", json.dumps({"data": []}).encode(), "application/json")
        assert other.response is not None
        assert rendered(other, other.response)[0] != "Detour"
        assert rendered(flow, flow.request)[0] != "Detour"
    finally:
        contentview.unregister()
