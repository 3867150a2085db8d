"""Every attempt of a failed-over request as a flow of its own, with the provider's real answer.

The client's flow shows what the client sent and got; when more than one provider was tried, each
attempt (the failed primary included) is published as a separate flow, so mitmweb and saved flows
show who answered what. Credentials on those requests (a provider's key, or the client's own for a
provider without one) are masked here, before the flow exists anywhere else.
"""

from __future__ import annotations

from mitmproxy import connection, ctx, flow, http

from addon.driver import AttemptReport
from addon.exchange import Answer, Exchange
from addon.mitm.flows import MASKED, TRUNCATED, mask_credentials, mask_query_credentials
from addon.mitm.internals import finished_hook
from addon.secrets import redact_bytes

MARK_FAILED_ATTEMPT = ":warning:"


def needs_publishing(reports: list[AttemptReport]) -> bool:
    """A lone successful attempt is fully shown by the client's own flow."""
    return len(reports) > 1 or any(r.verdict is None or r.verdict.fails_over for r in reports)


def attempt_flow(
    client: http.HTTPFlow, exchange: Exchange, report: AttemptReport, total: int
) -> http.HTTPFlow:
    app = exchange.app.name
    request = report.request
    target = request.target
    provider = report.provider
    fields = mask_credentials(request.headers)
    attempt = http.HTTPFlow(client.client_conn, connection.Server(address=(target.host, target.port)))
    attempt.request = http.Request(
        target.host,
        target.port,
        request.method.encode(),
        target.scheme.encode(),
        target.authority.encode(),
        mask_query_credentials(request.path).encode(),
        b"HTTP/1.1",
        http.Headers(fields),
        request.body,
        None,
        report.started,
        report.ended,
    )
    verdict = report.verdict
    if report.status is not None:
        # The provider's answer as people may see it: uncompressed, any key it echoed masked.
        answer = exchange.readable(Answer(report.status, report.headers, report.body))
        secrets = exchange.secrets
        headers = tuple((name, redact_bytes(value, secrets)) for name, value in answer.headers)
        attempt.response = http.Response(
            b"HTTP/1.1",
            report.status,
            b"",
            http.Headers(headers),
            redact_bytes(answer.body, secrets),
            None,
            report.started,
            report.ended,
        )
    elif verdict is not None:
        attempt.error = flow.Error(verdict.reason)
    outcome = (
        "client left" if verdict is None else "ok" if not verdict.fails_over else f"failed ({verdict.reason})"
    )
    attempt.comment = f"attempt {report.number}/{total} on {provider.id} for {app}: {outcome}"
    if verdict is not None and verdict.fails_over:
        attempt.marked = MARK_FAILED_ATTEMPT
    attempt.is_replay = "request"
    attempt.metadata["detour"] = {"client_flow": client.id, "attempt": report.number, "provider": provider.id}
    attempt.metadata[MASKED] = True
    if report.truncated:
        attempt.metadata[TRUNCATED] = True
    return attempt


async def publish(client: http.HTTPFlow, exchange: Exchange, reports: list[AttemptReport]) -> None:
    """Add the attempts to mitmweb's list and hand them to the other addons (saving, dumping)."""
    total = len(reports)
    view = ctx.master.addons.get("view")
    for report in reports:
        attempt = attempt_flow(client, exchange, report, total)
        if view is not None:
            view.add([attempt])
        await ctx.master.addons.handle_lifecycle(finished_hook(attempt))
