"""Reading what the broker sends, and refusing what it should never send."""

from __future__ import annotations

import pytest

from aktin_sftp.broker import NS, keeps_tag, parse_request_ids, parse_statuses, parse_xml, tag_predicate
from aktin_sftp.errors import SyncError, UnavailableError
from tests.peers.broker import request_xml

LISTING = (
    b'<ns2:request-list xmlns:ns2="http://aktin.org/ns/exchange">'
    b'<ns2:request id="3"/><ns2:request id="12"/></ns2:request-list>'
)


def test_listing_is_read_namespace_aware() -> None:
    assert parse_request_ids(parse_xml(LISTING, "listing")) == [3, 12]


@pytest.mark.parametrize("bad", ["x", "1.5", "-1", "", "1 or 1=1", "9" * 19])
def test_request_ids_must_be_plain_integers(bad: str) -> None:
    body = f'<request-list xmlns="http://aktin.org/ns/exchange"><request id="{bad}"/></request-list>'.encode()
    with pytest.raises(SyncError, match="not a plain integer"):
        parse_request_ids(parse_xml(body, "listing"))


def test_doctype_and_malformed_answers_are_refused() -> None:
    with pytest.raises(SyncError, match="DOCTYPE"):
        parse_xml(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "listing")
    with pytest.raises(UnavailableError, match="malformed XML"):
        parse_xml(b"<request-list", "listing")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le"])
def test_a_dtd_is_refused_in_any_encoding(encoding: str) -> None:
    body = (
        f'<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE r [<!ENTITY a "aaaa">]>'
        f'<request-list xmlns="http://aktin.org/ns/exchange"><request id="1">&a;</request></request-list>'
    ).encode(encoding)
    # Without a byte order mark, the parser cannot read UTF-16 at all.
    with pytest.raises(SyncError, match="malformed XML" if encoding == "utf-16-le" else "DOCTYPE declaration; refused"):
        parse_xml(body, "listing")
    assert keeps_tag(body, "rki") is True


def test_statuses_keep_only_result_timestamps() -> None:
    body = (
        f'<request-status-list xmlns="{NS[1:-1]}"><request-status-info><node>2</node>'
        "<retrieved>2026-01-01T00:00:00Z</retrieved><completed>2026-01-02T00:00:00Z</completed>"
        "</request-status-info></request-status-list>"
    ).encode()
    (status,) = parse_statuses(parse_xml(body, "status"), 1)
    assert status.node == 2
    assert status.timestamps == (("completed", "2026-01-02T00:00:00Z"),)


def test_the_predicate_holds_only_the_checked_tag() -> None:
    assert tag_predicate("rki") == (
        "boolean(//*[local-name()='principal']/*[local-name()='tags']/*[local-name()='tag'][normalize-space(.)='rki'])"
    )


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (request_xml("t", ["other", "rki"]), True),
        (request_xml("t", [" rki "], prefix="ns"), True),
        (request_xml("t", ["other"]), False),
        (request_xml("t", []), False),
        ('<queryRequest><query><title>rki</title><tag>rki</tag></query></queryRequest>', False),
        ("<queryRequest><query>", True),
        ('<!DOCTYPE q [<!ENTITY t "rki">]><queryRequest/>', True),
    ],
    ids=["tagged", "prefixed", "other-tag", "no-tags", "tag-elsewhere", "unparsable", "doctype"],
)
def test_a_missing_request_is_removed_only_when_its_definition_shows_no_tag(definition: str, expected: bool) -> None:
    assert keeps_tag(definition.encode(), "rki") is expected
