"""The AKTIN Broker's admin API, as far as delivering results needs it."""

from __future__ import annotations

import logging
import re
import threading
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import requests
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from aktin_sftp import xmlsafe
from aktin_sftp.config import BrokerConfig
from aktin_sftp.errors import Cancelled, ConfigError, SyncError, UnavailableError
from aktin_sftp.faults import checkpoint
from aktin_sftp.sessions import CHUNK, RETRY_STATUSES, Answer, Sessions, Stalled, Streamed, TooLarge, retry_cause

log = logging.getLogger(__name__)

NS = "{http://aktin.org/ns/exchange}"
REQUEST_TYPE = "application/vnd.aktin.query.request+xml"
# Far above what any listing or status answer needs (a listing of 100 000 requests is ~10 MiB);
# a longer answer is refused rather than held in memory and parsed.
MAX_ANSWER = 64 << 20
# Timestamps that say a node has produced (or given up on) a result; `retrieved`, `queued`
# and `processing` come and go on the way and do not change what the bundle holds.
RESULT_STATES = ("completed", "rejected", "failed")
# What GET /broker/request/{id} answers for a deleted request, or one without a query definition.
GONE = (404, 406)


class KeyRefused(ConfigError):
    """The broker refused the API key (HTTP 401 or 403)."""


class RequestFailed(SyncError):
    """The broker failed for one request; the others can still be delivered."""


class GatewayFailed(RequestFailed):
    """A proxy in front of the broker answered 502, 503 or 504: it may have passed the call on."""


@dataclass(frozen=True)
class NodeStatus:
    node: int
    timestamps: tuple[tuple[str, str], ...]

    def stamp(self, state: str) -> str | None:
        return dict(self.timestamps).get(state)


def tag_predicate(tag: str) -> str:
    """An XPath that is true when a request carries `tag`, whatever namespace prefix or
    whitespace its definition uses. `tag` was checked against config.TAG_PATTERN."""
    return (
        "boolean(//*[local-name()='principal']/*[local-name()='tags']"
        f"/*[local-name()='tag'][normalize-space(.)='{tag}'])"
    )


def parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        return xmlsafe.parse(body)
    except xmlsafe.DoctypeRefused:
        raise SyncError(f"broker answered {what} with a DOCTYPE declaration; refused (possible XML entity attack)") from None
    except ET.ParseError as exc:
        raise UnavailableError(
            f"broker answered {what} with malformed XML ({exc}); nothing was changed, the next run tries again"
        ) from None


def keeps_tag(definition: bytes, tag: str) -> bool:
    """Whether a request definition carries `tag` under principal/tags, whatever its namespace
    prefix. A definition that cannot be read counts as keeping it: deleting on a guess is worse."""
    try:
        root = xmlsafe.parse(definition)
    except (xmlsafe.DoctypeRefused, ET.ParseError):
        return True

    def local(element: ET.Element) -> str:
        return element.tag.rsplit("}", 1)[-1]

    return any(
        local(tags) == "tags" and local(item) == "tag" and (item.text or "").strip() == tag
        for principal in root.iter() if local(principal) == "principal"
        for tags in principal
        for item in tags
    )


def parse_request_ids(root: ET.Element) -> list[int]:
    if root.tag != f"{NS}request-list":
        raise SyncError(f"broker listing is a <{root.tag}>, not a request-list; nothing was changed")
    ids = []
    for element in root.findall(f"{NS}request"):
        text = element.get("id", "")
        if not re.fullmatch(r"[0-9]{1,18}", text):
            raise SyncError(f"broker listing has a request id {text[:40]!r} that is not a plain integer; nothing was changed")
        ids.append(int(text))
    return ids


def parse_statuses(root: ET.Element, request_id: int) -> list[NodeStatus]:
    if root.tag != f"{NS}request-status-list":
        raise RequestFailed(f"status of request {request_id} is a <{root.tag}>, not a request-status-list")
    statuses = []
    for info in root.findall(f"{NS}request-status-info"):
        node = info.findtext(f"{NS}node", "")
        if not re.fullmatch(r"[0-9]{1,18}", node.strip()):
            raise RequestFailed(f"status of request {request_id} names a node {node[:40]!r} that is not an integer")
        stamps = tuple(
            (child.tag[len(NS):], (child.text or "").strip())
            for child in info
            if child.tag.startswith(NS) and child.tag[len(NS):] in RESULT_STATES
        )
        statuses.append(NodeStatus(int(node), tuple(sorted(stamps))))
    return statuses


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.base = config.url
        self.headers = {"Authorization": f"Bearer {config.api_key.reveal()}"}
        self.sessions = Sessions(config.url, config.timeout, config.ca_bundle)
        # One export and its download at a time, however many uploads run: broker 1.5.1 walks
        # its table of downloads (a Hashtable) on every download while an export adds to it, and
        # answers HTTP 500 when the two meet. Exports are quick; the uploads are what take long.
        self.exporting = threading.Lock()
        # An export that was sent but got no answer (timed out, connection lost, or a gateway
        # error from a proxy in front of the broker) may still be running on the broker, so
        # releasing the lock would not keep the next download from meeting it. The export POST
        # is never re-sent (sessions.REPEATABLE), and once one is unsettled no further export or
        # download starts in this run: the next run does them.
        self.unsettled: int | None = None

    def close(self) -> None:
        self.sessions.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def version(self) -> str:
        root = parse_xml(self._call("GET", "/broker/status", "the status call").body, "the status call")
        versions = {m.get("id"): m.findtext(f"{NS}version") for m in root.iter(f"{NS}module")}
        return versions.get("broker-server") or "unknown"

    def tagged_request_ids(self, tag: str) -> list[int]:
        what = "the listing of tagged requests"
        query = urlencode({"type": REQUEST_TYPE, "predicate": tag_predicate(tag)})
        answer = self._call("GET", f"/broker/request/filtered?{query}", what)
        return parse_request_ids(parse_xml(answer.body, what))

    def all_node_statuses(self, request_ids: list[int]) -> dict[int, list[NodeStatus] | RequestFailed]:
        """Status of many requests over `parallel` keep-alive connections; a request whose
        status call failed maps to its failure, so that the others can go on."""
        checkpoint("broker:status")
        with ThreadPoolExecutor(self.config.parallel) as pool:
            return dict(zip(request_ids, pool.map(self._node_statuses_or_failure, request_ids), strict=True))

    def _node_statuses_or_failure(self, request_id: int) -> list[NodeStatus] | RequestFailed:
        try:
            return self.node_statuses(request_id)
        except RequestFailed as exc:
            return exc

    def why_unlisted(self, request_id: int, tag: str) -> str | None:
        """Checks a request missing from the filtered listing: the broker leaves out any
        definition it cannot parse, so absence alone does not prove deletion or untagging.
        None if it still carries the tag, else what happened to it, in words."""
        answer = self._call(
            "GET", f"/broker/request/{request_id}", f"the definition of request {request_id}",
            accept=REQUEST_TYPE, gone=GONE,
        )
        if answer.status in GONE:
            return "deleted on the broker"
        return None if keeps_tag(answer.body, tag) else f"no longer tagged {tag!r} on the broker"

    def node_statuses(self, request_id: int) -> list[NodeStatus]:
        what = f"the status of request {request_id}"
        answer = self._call("GET", f"/broker/request/{request_id}/status", what, per_request=True)
        return parse_statuses(parse_xml(answer.body, what), request_id)

    def export(self, request_id: int, target: Path, cancelled: threading.Event) -> int:
        """Has the broker build the request's bundle and streams it into `target`, unless the
        run has failed (`cancelled`) by the time the one-at-a-time lock comes to it."""
        with self.exporting:
            if cancelled.is_set():
                raise Cancelled(request_id)
            if self.unsettled is not None:
                raise RequestFailed(
                    f"request {request_id} was not exported in this run: the broker may still be building the "
                    f"bundle of request {self.unsettled}, whose export got no answer from it"
                )
            return self._export(request_id, target)

    def _export(self, request_id: int, target: Path) -> int:
        what = f"the export of request {request_id}"
        checkpoint("broker:export")
        try:
            answer = self._call(
                "POST", f"/broker/export/request-bundle/{request_id}", what, accept="text/plain", per_request=True
            )
        except (UnavailableError, GatewayFailed):
            self.unsettled = request_id
            raise
        token = answer.body.decode("utf-8", "replace").strip()
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", token):
            raise RequestFailed(f"{what} answered {token[:40]!r} instead of a download id")
        what = f"the download of request {request_id}"
        limit = self.config.max_download_mib << 20
        with self._stream("GET", f"/broker/download/{quote(token)}", what) as response:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > limit:
                raise RequestFailed(f"{what} is {int(expected) >> 20} MiB, more than [broker] max_download_mib")
            size = 0
            with open(target, "wb") as handle:
                try:
                    for chunk in response.chunks():
                        size += len(chunk)
                        if size > limit:
                            raise RequestFailed(f"{what} exceeded [broker] max_download_mib; stopped")
                        handle.write(chunk)
                        checkpoint("download")
                except Stalled:
                    raise self._stalled(what) from None
                except requests.RequestException as exc:
                    raise RequestFailed(f"{what} broke off: {_reason(exc)}") from None
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise RequestFailed(f"{what} broke off after {size} of {expected} bytes")
        # Without a Content-Length, a download cut short looks complete; a zip's directory is at
        # its very end, so a bundle that opens as a zip is whole.
        try:
            zipfile.ZipFile(target).close()
        except zipfile.BadZipFile:
            raise RequestFailed(f"{what} is not a whole zip ({size} bytes; cut short?)") from None
        return size

    def _call(
        self, method: str, path: str, what: str, accept: str | None = None, per_request: bool = False,
        gone: tuple[int, ...] = (),
    ) -> Answer:
        try:
            answer = self.sessions.call(method, path, self._headers(accept), MAX_ANSWER)
        except Stalled:
            raise self._stalled(what) from None
        except TooLarge as exc:
            raise SyncError(f"broker answered {what} with {exc}; refused") from None
        except requests.RequestException as exc:
            raise self._unavailable(exc, what) from None
        self._check(answer.status, answer.headers, what, per_request, gone)
        return answer

    @contextmanager
    def _stream(self, method: str, path: str, what: str) -> Iterator[Streamed]:
        try:
            with self.sessions.stream(method, path, self._headers(None)) as response:
                self._check(response.status_code, response.headers, what, True, ())
                yield response
        except Stalled:
            raise self._stalled(what) from None
        except requests.RequestException as exc:
            raise self._unavailable(exc, what) from None

    def _headers(self, accept: str | None) -> dict[str, str]:
        return {**self.headers, "Accept": accept} if accept else self.headers

    def _check(self, status: int, headers: Mapping[str, str], what: str, per_request: bool, gone: tuple[int, ...]) -> None:
        if status in (401, 403):
            raise KeyRefused(
                f"broker refused the API key (HTTP {status}) for {what}; "
                "[broker] api_key must be an admin key (its DN has OU=admin)"
            )
        if 300 <= status < 400:
            # Not followed: a redirect could carry the API key to another host or to plain HTTP.
            raise ConfigError(
                f"broker answered {what} with a redirect (HTTP {status}) to "
                f"{headers.get('Location', 'nowhere')!r}; set [broker] url to where the broker is"
            )
        if status == 404 and not per_request and status not in gone:
            # The status call and the listing exist on every broker: a wrong address, not a
            # passing trouble.
            raise ConfigError(
                f"broker answered {what} with HTTP 404: {self.base} does not look like an AKTIN Broker; "
                "check [broker] url (the server root, for instance http://localhost:8080)"
            )
        if status >= 400 and status not in gone:
            message = f"broker answered {what} with HTTP {status}"
            if not per_request:
                raise UnavailableError(message)
            raise GatewayFailed(message) if status in RETRY_STATUSES else RequestFailed(message)

    def _stalled(self, what: str, trickle: bool = True) -> UnavailableError:
        slow = f" (or sent less than {CHUNK >> 10} KiB of it in that time)" if trickle else ""
        return UnavailableError(
            f"broker at {self.base} did not answer {what} within [broker] timeout = {self.config.timeout:g} s{slow}; "
            "raise [broker] timeout if the broker is that slow"
        )

    def _unavailable(self, exc: requests.RequestException, what: str) -> UnavailableError:
        cause = retry_cause(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            return UnavailableError(
                f"TLS to the broker at {self.base} failed ({_reason(exc)}); check [broker] ca_bundle"
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return UnavailableError(
                f"broker at {self.base} did not accept a connection within [broker] timeout = {self.config.timeout:g} s "
                "(host down, or a firewall dropping the connection?)"
            )
        if isinstance(exc, requests.exceptions.Timeout) or isinstance(cause, ReadTimeoutError):
            return self._stalled(what, trickle=False)
        if isinstance(cause, NewConnectionError):
            return UnavailableError(f"broker at {self.base} is unreachable ({_reason(exc)}); is it running?")
        return UnavailableError(f"{what} failed: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    """The innermost cause, which names the actual problem (refused, no route, bad cert)."""
    while exc.__context__ is not None and isinstance(exc.__context__, Exception):
        exc = exc.__context__
    return type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
