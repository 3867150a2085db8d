"""Issue 13, direction 1, end to end: Claude's SDK talks Anthropic Messages to a real mitmdump running
Detour; the primary (Anthropic) fails, and the backup speaks only OpenAI Chat (`api: openai-chat`).
The SDK's own accumulator must get a complete Anthropic message, streamed and whole."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import configs
import pytest
from harness import Mitmdump, free_port
from mockprovider import MockProvider

pytestmark = pytest.mark.integration

MESSAGES: Any = [{"role": "user", "content": "hi"}]


@dataclass
class Translated:
    """A real mitmdump whose app fails over from a failing primary to a backup speaking `api`."""

    port: int
    primary: MockProvider
    backup: MockProvider
    md: Mitmdump


def translated(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
    app: str,
    api: str,
    models: dict[str, str],
    failure: int,
) -> Translated:
    host = {"claude": "api.anthropic.com", "codex": "api.openai.com"}[app]
    primary, backup = mock_factory("primary"), mock_factory("backup")
    queue = [
        configs.provider("primary", primary.base_url),
        configs.provider("backup", backup.base_url, configs.BACKUP_KEY_ENV, api=api, models=models),
    ]
    config = configs.write(tmp_path / "config.yaml", configs.config({app: configs.app(host, queue)}))
    port = free_port()
    md = mitmdump_factory(config, reverse={port: f"https://{host}"}, env=configs.KEY_ENV)
    primary.fault("status", status=failure)
    return Translated(port, primary, backup, md)


def anthropic_client(port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}", api_key=configs.CLIENT_KEY, max_retries=0, timeout=15
    )


def openai_client(port: int) -> Any:
    import openai

    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=configs.CLIENT_KEY, max_retries=0, timeout=15
    )


def serve(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> tuple[anthropic.Anthropic, MockProvider, MockProvider, Mitmdump]:
    rig = translated(tmp_path, mock_factory, mitmdump_factory, "claude", "openai-chat",
                     {"claude-*": "deepseek-chat"}, 529)  # fmt: skip
    return anthropic_client(rig.port), rig.primary, rig.backup, rig.md


def test_a_stream_from_a_chat_provider_reaches_the_anthropic_sdk_whole(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    client, _, backup, md = serve(tmp_path, mock_factory, mitmdump_factory)
    with client.messages.stream(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES, system="Be brief."
    ) as s:
        message = s.get_final_message()
        provider = s.response.headers.get("x-detour-provider")
    assert provider == "backup"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "hello from backup"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 5
    (sent,) = list(backup.requests_to("/v1/chat/completions"))
    assert sent.json["model"] == "deepseek-chat" and sent.json["stream_options"] == {"include_usage": True}
    assert sent.json["messages"][:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert sent.headers["authorization"] == f"Bearer {configs.KEY_B}" and "x-api-key" not in sent.headers
    assert not any(k.startswith("anthropic-") for k in sent.headers)
    assert configs.secret_leaks(md.log_text().encode()) == []


def test_a_whole_answer_from_a_chat_provider_is_an_anthropic_message(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    client, _, _, _ = serve(tmp_path, mock_factory, mitmdump_factory)
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES)
    message = raw.parse()
    assert raw.headers["x-detour-provider"] == "backup"
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text == "hello from backup"


def test_a_chat_providers_error_reaches_the_client_in_anthropics_shape(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    client, _, backup, _ = serve(tmp_path, mock_factory, mitmdump_factory)
    backup.fault(
        "status", status=400, body={"error": {"message": "Invalid model", "type": "invalid_request_error"}}
    )
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES)
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "Invalid model" in info.value.body["error"]["message"]  # type: ignore[index]


def test_count_tokens_for_a_chat_provider_is_estimated_by_detour(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    client, _, backup, _ = serve(tmp_path, mock_factory, mitmdump_factory)
    raw = client.messages.with_raw_response.count_tokens(model="claude-sonnet-4", messages=[{"role": "user", "content": "hi " * 400}])  # noqa: E501
    assert raw.headers["x-detour-provider"] == "backup"
    assert 250 <= raw.parse().input_tokens <= 450  # four bytes a token: an estimate, documented so
    assert backup.count("/v1/") == 0  # nothing was sent to the provider


def test_an_openai_chat_client_is_served_by_an_anthropic_provider(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    rig = translated(tmp_path, mock_factory, mitmdump_factory, "codex", "anthropic",
                     {"gpt-*": "claude-sonnet-4"}, 503)  # fmt: skip
    client, backup = openai_client(rig.port), rig.backup
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    with client.chat.completions.stream(model="gpt-5", messages=messages) as stream:
        completion = stream.get_final_completion()
    assert completion.choices[0].message.content == "hello from backup"
    assert completion.choices[0].finish_reason == "stop"
    whole = client.chat.completions.create(model="gpt-5", messages=messages)
    assert whole.choices[0].message.content == "hello from backup"
    sent = [r for r in backup.received if r.path == "/v1/messages"]
    assert len(sent) == 2 and all(r.headers["x-api-key"] == configs.KEY_B for r in sent)
    assert sent[0].json["system"] == "Be brief." and sent[0].json["model"] == "claude-sonnet-4"
    assert sent[0].headers["anthropic-version"] == "2023-06-01" and "authorization" not in sent[0].headers


@pytest.mark.parametrize(("api", "model", "path"), [
    ("openai-responses", "gpt-5", "/v1/responses"),
    ("gemini", "gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
])  # fmt: skip
def test_claudes_sdk_is_served_by_a_responses_or_gemini_provider(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
    api: str,
    model: str,
    path: str,
) -> None:
    rig = translated(tmp_path, mock_factory, mitmdump_factory, "claude", api, {"claude-*": model}, 529)
    client, backup = anthropic_client(rig.port), rig.backup
    with client.messages.stream(model="claude-sonnet-4", max_tokens=64, messages=MESSAGES) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "hello from backup"
    assert message.stop_reason == "end_turn"
    (sent,) = [r for r in backup.received if r.path.startswith(path)]
    auth = sent.headers.get("authorization") if api == "openai-responses" else sent.headers.get("x-goog-api-key")  # noqa: E501
    assert auth in (f"Bearer {configs.KEY_B}", configs.KEY_B)


def test_a_responses_client_is_served_by_an_anthropic_provider(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    """Codex's API (Responses) through a real mitmdump to a provider that speaks only Anthropic: the
    `openai` SDK's own Responses accumulator gets the answer, streamed and whole."""
    rig = translated(tmp_path, mock_factory, mitmdump_factory, "codex", "anthropic",
                     {"gpt-*": "claude-sonnet-4"}, 503)  # fmt: skip
    client, backup = openai_client(rig.port), rig.backup
    with client.responses.stream(model="gpt-5", instructions="Be brief.", input="hi") as stream:
        response = stream.get_final_response()
    assert response.output_text == "hello from backup" and response.status == "completed"
    whole = client.responses.create(model="gpt-5", input="hi")
    assert whole.output_text == "hello from backup"
    sent = [r for r in backup.received if r.path == "/v1/messages"]
    assert len(sent) == 2 and sent[0].json["system"] == "Be brief." and sent[0].json["model"] == "claude-sonnet-4"  # noqa: E501
    assert all(r.headers["x-api-key"] == configs.KEY_B for r in sent)
