"""The AKTIN Broker's admin API, as far as delivering results needs it."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import urllib3
from urllib3.util.retry import Retry

from aktin_sftp.config import BrokerConfig
from aktin_sftp.errors import ConfigError, SyncError, UnavailableError
from aktin_sftp.faults import checkpoint
from aktin_sftp.xmlsafe import declares_doctype

log = logging.getLogger(__name__)

NS = "{http://aktin.org/ns/exchange}"
REQUEST_TYPE = "application/vnd.aktin.query.request+xml"
DOWNLOAD_CHUNK = 1 << 20
# Timestamps that say a node has produced (or given up on) a result; `retrieved`, `queued`
# and `processing` come and go on the way and do not change what the bundle holds.
RESULT_STATES = ("completed", "rejected", "failed")
# What GET /broker/request/{id} answers for a deleted request, or one without a query definition.
GONE = (404, 406)


class RequestFailed(SyncError):
    """The broker failed for one request; the others can still be delivered."""


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
    if declares_doctype(body):
        raise SyncError(f"broker answered {what} with a DOCTYPE declaration; refused (possible XML entity attack)")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise UnavailableError(
            f"broker answered {what} with malformed XML ({exc}); nothing was changed, the next run tries again"
        ) from None


def keeps_tag(definition: bytes, tag: str) -> bool:
    """Whether a request definition carries `tag` under principal/tags, whatever its namespace
    prefix. A definition that cannot be read counts as keeping it: deleting on a guess is worse."""
    if declares_doctype(definition):
        return True
    try:
        root = ET.fromstring(definition)
    except ET.ParseError:
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
        # urllib3 rather than requests: a run makes one status call per tagged request, and
        # requests' per-call machinery (hooks, cookies, settings merging) doubled our CPU time for
        # them. Like before, no proxy or CA variables from the environment are consulted: the
        # config alone decides where we connect.
        # Transient failures are retried with backoff; every call here is safe to repeat (an
        # export only builds a new zip). A timed-out read is tried once more only: the broker may
        # be building a large bundle, and each try waits the whole timeout.
        retry = Retry(
            total=3,
            read=1,
            backoff_factor=0.5,
            status_forcelist=(502, 503, 504),
            allowed_methods=None,
            raise_on_status=False,
        )
        self.pool = urllib3.PoolManager(
            maxsize=config.parallel,
            retries=retry,
            timeout=config.timeout,
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(config.ca_bundle) if config.ca_bundle else None,
        )

    def close(self) -> None:
        self.pool.clear()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def version(self) -> str:
        root = parse_xml(self._call("GET", "/broker/status", "the status call").data, "the status call")
        versions = {m.get("id"): m.findtext(f"{NS}version") for m in root.iter(f"{NS}module")}
        return versions.get("broker-server") or "unknown"

    def tagged_request_ids(self, tag: str) -> list[int]:
        what = "the listing of tagged requests"
        query = urlencode({"type": REQUEST_TYPE, "predicate": tag_predicate(tag)})
        response = self._call("GET", f"/broker/request/filtered?{query}", what)
        return parse_request_ids(parse_xml(response.data, what))

    def all_node_statuses(self, request_ids: list[int]) -> dict[int, list[NodeStatus]]:
        """Status of many requests over one keep-alive pool, `parallel` calls at a time."""
        with ThreadPoolExecutor(self.config.parallel) as pool:
            return dict(zip(request_ids, pool.map(self.node_statuses, request_ids), strict=True))

    def still_tagged(self, request_id: int, tag: str) -> bool:
        """Checks a request missing from the filtered listing: the broker leaves out any
        definition it cannot parse, so absence alone does not prove deletion or untagging."""
        response = self._call(
            "GET", f"/broker/request/{request_id}", f"the definition of request {request_id}",
            accept=REQUEST_TYPE, gone=GONE,
        )
        return response.status not in GONE and keeps_tag(response.data, tag)

    def node_statuses(self, request_id: int) -> list[NodeStatus]:
        what = f"the status of request {request_id}"
        response = self._call("GET", f"/broker/request/{request_id}/status", what, per_request=True)
        return parse_statuses(parse_xml(response.data, what), request_id)

    def export(self, request_id: int, target: Path) -> int:
        """Has the broker build the request's bundle and streams it into `target`."""
        what = f"the export of request {request_id}"
        response = self._call(
            "POST", f"/broker/export/request-bundle/{request_id}", what, accept="text/plain", per_request=True
        )
        token = response.data.decode("utf-8", "replace").strip()
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", token):
            raise RequestFailed(f"{what} answered {token[:40]!r} instead of a download id")
        what = f"the download of request {request_id}"
        limit = self.config.max_download_mib << 20
        # Closed rather than returned to the pool: a download stopped early leaves unread bytes.
        with closing(self._call("GET", f"/broker/download/{quote(token)}", what, per_request=True, stream=True)) as response:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > limit:
                raise RequestFailed(f"{what} is {int(expected) >> 20} MiB, more than [broker] max_download_mib")
            size = 0
            with open(target, "wb") as handle:
                try:
                    for chunk in response.stream(DOWNLOAD_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise RequestFailed(f"{what} exceeded [broker] max_download_mib; stopped")
                        handle.write(chunk)
                        checkpoint("download")
                except urllib3.exceptions.HTTPError as exc:
                    raise RequestFailed(f"{what} broke off after {size} bytes ({_reason(exc)})") from None
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise RequestFailed(f"{what} broke off after {size} of {expected} bytes")
        return size

    def _call(
        self, method: str, path: str, what: str, accept: str | None = None, per_request: bool = False,
        gone: tuple[int, ...] = (), stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        headers = {**self.headers, "Accept": accept} if accept else self.headers
        try:
            # Redirects are not followed: one could carry the API key to another host or to
            # plain HTTP. The error below names where it points instead.
            response = self.pool.urlopen(
                method, self.base + path, headers=headers, redirect=False, preload_content=not stream
            )
        except urllib3.exceptions.HTTPError as exc:
            raise self._unavailable(exc, what) from None
        try:
            self._check(response, what, per_request, gone)
        except SyncError:
            response.close()
            raise
        return response

    def _check(self, response: urllib3.BaseHTTPResponse, what: str, per_request: bool, gone: tuple[int, ...]) -> None:
        if response.status in (401, 403):
            raise ConfigError(
                f"broker refused the API key (HTTP {response.status}) for {what}; "
                "[broker] api_key must be an admin key (its DN has OU=admin)"
            )
        if 300 <= response.status < 400:
            raise ConfigError(
                f"broker answered {what} with a redirect (HTTP {response.status}) to "
                f"{response.headers.get('Location', 'nowhere')!r}; set [broker] url to where the broker is"
            )
        if response.status >= 400 and response.status not in gone:
            error = RequestFailed if per_request else UnavailableError
            raise error(f"broker answered {what} with HTTP {response.status}")

    def _unavailable(self, exc: urllib3.exceptions.HTTPError, what: str) -> UnavailableError:
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        if isinstance(cause, urllib3.exceptions.SSLError):
            return UnavailableError(
                f"TLS to the broker at {self.base} failed ({_reason(exc)}); check [broker] ca_bundle"
            )
        # urllib3 counts NewConnectionError as a timeout; here it means nobody listens.
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            return UnavailableError(f"broker at {self.base} is unreachable ({_reason(exc)}); is it running?")
        if isinstance(cause, urllib3.exceptions.TimeoutError):
            return UnavailableError(f"broker at {self.base} did not answer {what} within {self.config.timeout:g} s")
        return UnavailableError(f"{what} failed: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    """The innermost cause, which names the actual problem (refused, no route, bad cert)."""
    while exc.__context__ is not None and isinstance(exc.__context__, Exception):
        exc = exc.__context__
    return type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
