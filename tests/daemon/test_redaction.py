"""Secret scrubbing: registered secrets, secret query parameters and Authorization headers."""

from __future__ import annotations

import uuid

from octopus_crm.core.redaction import REDACTED, redact, redact_value, register_secret


def secret(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def test_registered_secrets_are_replaced_everywhere() -> None:
    token = secret("tok")
    register_secret(token)
    text = f"POST failed: token {token} rejected; retry with {token}"
    assert redact(text) == f"POST failed: token {REDACTED} rejected; retry with {REDACTED}"


def test_longer_secret_wins_over_a_registered_prefix() -> None:
    short = secret("pw")
    long = short + "-extended"
    register_secret(short)
    register_secret(long)
    assert redact(f"[{long}]") == f"[{REDACTED}]"


def test_very_short_values_are_not_registered() -> None:
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert redact("abc abcdef") == "abc abcdef"


def test_regex_metacharacters_in_secrets() -> None:
    odd = f"a+b*c?(d)[e]{uuid.uuid4().hex[:6]}"
    register_secret(odd)
    assert redact(f"x {odd} y") == f"x {REDACTED} y"


def test_secret_query_parameters_in_urls() -> None:
    url = (
        "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=AbC123"
        "&access_token=xyz789&hapikey=k1&page=2"
    )
    assert redact(url) == (
        "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=[REDACTED]"
        "&access_token=[REDACTED]&hapikey=[REDACTED]&page=2"
    )
    assert redact("https://api.trello.com/1/cards?key=K1&token=T2&idList=9") == (
        "https://api.trello.com/1/cards?key=[REDACTED]&token=[REDACTED]&idList=9"
    )
    form = "grant_type=password&client_id=c&client_secret=S3&password=P4&username=u"
    assert redact(form) == ("grant_type=password&client_id=c&client_secret=[REDACTED]&password=[REDACTED]&username=u")


def test_authorization_headers() -> None:
    assert redact("Authorization: Bearer eyJhbGciOi.J9x.yz") == "Authorization: [REDACTED]"
    assert redact("authorization=Basic dXNlcjpwYXNz") == "authorization=[REDACTED]"
    headers = {"Authorization": "Bearer abc.def", "Accept": "application/json"}
    assert redact(str(headers)) == "{'Authorization': '[REDACTED]', 'Accept': 'application/json'}"
    assert redact('{"authorization":"Zoho-oauthtoken 1000.abc"}') == '{"authorization":"[REDACTED]"}'


def test_redact_value_walks_nested_structures() -> None:
    token = secret("nested")
    register_secret(token)
    value = {
        "url": "https://x.example/api?api_key=AAA&q=1",
        "headers": {"Authorization": f"Bearer {token}"},
        "attempts": [token, 3, None],
        "ok": True,
    }
    assert redact_value(value) == {
        "url": "https://x.example/api?api_key=[REDACTED]&q=1",
        "headers": {"Authorization": REDACTED},
        "attempts": [REDACTED, 3, None],
        "ok": True,
    }


def test_secret_named_keys_are_redacted_even_when_the_value_was_never_registered() -> None:
    value = {
        "Authorization": "Bearer never-registered-abc",
        "X-Api-Key": "k-123456",
        "client_secret": "s",
        "name": "ok",
    }
    assert redact_value(value) == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
        "client_secret": REDACTED,
        "name": "ok",
    }


def test_plain_text_is_untouched() -> None:
    text = "客户 王小明 asked about pricing for 200 seats (priority=high)"
    assert redact(text) == text


def test_a_secret_is_found_in_a_rendered_json_line_too() -> None:
    """A JSON log line is scrubbed once, rendered: a secret with characters JSON escapes is
    registered in its escaped form as well."""
    import orjson

    token = 'q"uote\\' + secret("tok")
    register_secret(token)
    rendered = orjson.dumps({"error": f"rejected {token}"}).decode()
    assert token not in orjson.loads(redact(rendered))["error"]
    assert orjson.loads(redact(rendered)) == {"error": f"rejected {REDACTED}"}


def test_mask_secret_keys_touches_only_secret_named_keys() -> None:
    from octopus_crm.core.redaction import mask_secret_keys

    value = {"password": "hunter2", "nested": [{"api_key": "k", "text": "token=abc"}], "n": 1}
    assert mask_secret_keys(value) == {
        "password": REDACTED,
        "nested": [{"api_key": REDACTED, "text": "token=abc"}],  # strings: scrubbed once rendered
        "n": 1,
    }


def test_a_retry_record_is_encoded_with_its_errors_scrubbed() -> None:
    from octopus_crm.daemon.retrying import AttemptRecord, RetryRecord
    from tests.events import retry_record

    token = secret("tok")
    register_secret(token)
    error = {"class": "retryable", "code": "http_503", "message": f"rejected {token}"}
    record = retry_record(
        value='{"content": "kept as it came"}',
        history=[AttemptRecord(integration="a", at=1.0, error=error)],
        first_error=error,
    )
    encoded = record.encode_scrubbed()
    assert encoded == record.scrubbed().encode()
    assert token.encode() not in encoded and RetryRecord.decode(encoded).value == record.value


def test_a_text_scrubbed_before_a_registration_is_scrubbed_again_after_it() -> None:
    token = secret("late")
    text = f"id {token}"
    assert redact(text) == text  # remembered under the secrets known then
    register_secret(token)
    assert redact(text) == f"id {REDACTED}"
    assert redact(text) == f"id {REDACTED}"


def test_remembered_answers_stay_right_past_the_memos_bound() -> None:
    token = secret("many")
    register_secret(token)
    texts = [f"{i}:{token}" if i % 3 == 0 else f"tenant-{i}" for i in range(5000)]
    for _ in range(2):
        assert [redact(t) for t in texts] == [
            f"{i}:{REDACTED}" if i % 3 == 0 else f"tenant-{i}" for i in range(len(texts))
        ]
    assert redact("Authorization: Bearer x.y") == "Authorization: [REDACTED]"  # a short text with a colon
