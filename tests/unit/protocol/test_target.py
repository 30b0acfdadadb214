"""describe(): what may be said about a Redis URL never contains its secrets."""

from __future__ import annotations

import pytest
from tests.hostile import MARK, NON_URL, PASSWORD, hostile_urls, leaked

from kubeq.protocol.connection import redacted, with_credentials
from kubeq.protocol.target import describe


@pytest.mark.parametrize("url", hostile_urls("db.example:6379"))
def test_no_description_of_a_hostile_url_quotes_its_secrets(url: str) -> None:
    target = describe(url)
    assert leaked(str(target), target.problem, repr(target.hosts), target.username) == []
    assert leaked(redacted(url)) == []


@pytest.mark.parametrize("value", [None, 42, b"redis://x", NON_URL, "", "://", "redis://"])
def test_describe_never_raises(value: object) -> None:
    target = describe(value)
    assert target.problem is not None
    assert MARK not in str(target)


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://app:pw@h:6379/2", "redis://app:***@h:6379/2"),
        ("rediss://:pw@10.0.0.1", "rediss://***@10.0.0.1"),
        ("redis://[::1]:7000", "redis://[::1]:7000"),
        ("redis+sentinel://a:1,b/mymaster/3", "redis+sentinel://a:1,b:26379/mymaster/3"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis+cluster://app:pw@n1:7000", "redis+cluster://app:***@n1:7000"),
    ],
)
def test_a_usable_url_is_described_by_its_parts(url: str, text: str) -> None:
    target = describe(url)
    assert target.problem is None
    assert str(target) == text


def test_a_lone_user_part_may_be_a_password_and_is_hidden() -> None:
    assert str(describe("redis://hunter2@h:1/0")) == "redis://***@h:1/0"
    assert str(describe("redis://hunter2:@h:1/0")) == "redis://***@h:1/0"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://app:pa/ss@h:1/0", "percent-encode"),
        ("redis://app:pa?ss@h:1/0", "percent-encode"),
        ("redis://app:pa#ss@h:1/0", "percent-encode"),
        ("redis://h:1/0#frag", "#fragment"),
        ("redis://h:notaport/0", "malformed"),
        ("redis://h:1/zero", "database number"),
        ("redis://:pw@/0", "names no host"),
        ("redis+sentinel://s:1", "names no service"),
        ("http://h", "scheme kubeq does not support"),
        ("h:6379", "has no scheme"),
    ],
)
def test_unusable_urls_say_why_without_quoting(url: str, problem: str) -> None:
    target = describe(url)
    assert target.problem is not None
    assert problem in target.problem


def test_with_credentials_encodes_every_special_character() -> None:
    url = with_credentials("redis://h:6379/0", username="app", password=PASSWORD)
    target = describe(url)
    assert target.problem is None
    assert str(target) == "redis://app:***@h:6379/0"
    import redis.connection

    assert redis.connection.parse_url(url)["password"] == PASSWORD


def test_with_credentials_adds_a_client_certificate() -> None:
    url = with_credentials(
        "redis://h:6380/0", tls=True, tls_cert_file="/c/tls.crt", tls_key_file="/c/tls.key"
    )
    assert url == "rediss://h:6380/0?ssl_certfile=%2Fc%2Ftls.crt&ssl_keyfile=%2Fc%2Ftls.key"
