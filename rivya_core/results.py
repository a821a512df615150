"""Outputs that outlive the provider: a task's results copied into our own store before SUCCESS.

Providers keep outputs briefly (Replicate deletes an API prediction's files about an
hour after it ends), so a History link to the provider's URL dies. On success the
lifecycle hands the provider's URLs to a `ResultCopier`; the task becomes SUCCESS
with our copies' URLs in `result_urls`, and the provider's URLs stay on the timeline
(the `output_copy` event).

The port and its adapters:

- `ResultStore`: `put(key, file, content_type) -> url` and `owns(url)`.
- `LocalFolderStore`: a folder (default `data/results/`, or `RIVYA_RESULTS_DIR`); files
  are written whole (temporary name, then renamed) under `<task id>/<n>-<digest>.<ext>`,
  so a retried copy overwrites the same file. Its URLs are `RIVYA_RESULTS_BASE_URL/<key>`
  when that is set (the public path a reverse proxy serves the folder under), else
  `file://` URLs.
- `S3Store`: an S3-compatible bucket (boto3; `RIVYA_RESULTS_S3_BUCKET`, optional
  `RIVYA_RESULTS_S3_PREFIX` and `RIVYA_RESULTS_S3_ENDPOINT` for a non-AWS service);
  credentials come from boto3's own chain (environment, profile, instance role), never
  from us. Its URLs are `RIVYA_RESULTS_BASE_URL/<key>` (a CDN or public bucket URL) when
  set, else the bucket's own URL.

The fetch (`SafeFetcher`) refuses, before any byte is read:
- a scheme other than http/https, credentials in the URL;
- a host that resolves to a private, loopback, link-local, multicast, reserved or
  unspecified address (SSRF) -- every address the name resolves to is checked and the
  connection goes to the checked address (no second lookup to rebind), unless the host
  is in the explicit `allow_hosts` (tests use it for their loopback server; nothing
  reads it from configuration);
- a redirect to another host (same-host redirects are followed, at most MAX_REDIRECTS);
- a content type outside the allowed families (image, video, audio, octet-stream);
- a body over `max_bytes` (by Content-Length, or while streaming), or one that does not
  arrive whole within `deadline_s` (a slow drip).

A refusal is permanent (`CopyError.permanent`: retrying cannot help: the task fails
`output_copy_failed`); a timeout, a 5xx or a broken connection is transient: the
lifecycle retries the copy on the re-check backoff until COPY_DEADLINE_S after the first
failure, then fails the task `output_copy_failed` (class infrastructure: refunded by the
default policy).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from .domain import RivyaError, ValidationError

RESULTS_DIR_ENV = "RIVYA_RESULTS_DIR"
RESULTS_BASE_URL_ENV = "RIVYA_RESULTS_BASE_URL"
RESULTS_S3_BUCKET_ENV = "RIVYA_RESULTS_S3_BUCKET"
RESULTS_S3_PREFIX_ENV = "RIVYA_RESULTS_S3_PREFIX"
RESULTS_S3_ENDPOINT_ENV = "RIVYA_RESULTS_S3_ENDPOINT"
# QA only: loopback hosts the copier may fetch from (a fake provider on this machine); nothing else
# may be named here
TEST_ALLOW_HOSTS_ENV = "RIVYA_RESULTS_TEST_ALLOW_HOSTS"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "results"
OUTPUT_COPY_FAILED = "output_copy_failed"
COPY_DEADLINE_S = 900.0  # from the first failed copy: well inside Replicate's ~1 h retention
# How long a provider keeps an API output, by the host that serves it: Replicate deletes a
# prediction's files made through the API about an hour after it ends.
PROVIDER_RETENTION_S = {"replicate.delivery": 3600.0}
MAX_BYTES = 512 * 1024 * 1024
FETCH_DEADLINE_S = 120.0
MAX_REDIRECTS = 3
ALLOWED_TYPES = ("image/", "video/", "audio/", "model/", "application/octet-stream")
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
}


class CopyError(RivyaError):
    """An output that could not be copied. `permanent`: retrying cannot help."""

    code = "output_copy_error"

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message, code="output_copy_refused" if permanent else "output_copy_error")
        self.permanent = permanent


class ResultStore(Protocol):
    def put(self, key: str, data: IO[bytes], content_type: str) -> str:
        """Store the bytes under key (replacing what is there); return the URL to show."""

    def owns(self, url: str) -> bool:
        """True when url is one of this store's."""


# --- the local folder ------------------------------------------------------------------


class LocalFolderStore:
    def __init__(self, root: str | Path, base_url: str | None = None):
        self.root = Path(root).resolve()
        self.base_url = base_url.rstrip("/") if base_url else None

    def __repr__(self) -> str:
        return f"LocalFolderStore({str(self.root)!r}, base_url={self.base_url!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise CopyError("a result key outside the store", permanent=True)
        return path

    def put(self, key: str, data: IO[bytes], content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url_of(key)

    def url_of(self, key: str) -> str:
        return f"{self.base_url}/{key}" if self.base_url else self._path(key).as_uri()

    def owns(self, url: str) -> bool:
        prefix = self.base_url + "/" if self.base_url else self.root.as_uri() + "/"
        return isinstance(url, str) and url.startswith(prefix)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()


# --- an S3-compatible bucket ----------------------------------------------------------------


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        base_url: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ):
        if client is None:
            import boto3  # type: ignore[import-untyped]

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if base_url:
            self.base_url = base_url.rstrip("/")
        elif endpoint_url:
            self.base_url = f"{endpoint_url.rstrip('/')}/{bucket}"
        else:
            where = region or getattr(getattr(client, "meta", None), "region_name", None) or "us-east-1"
            self.base_url = f"https://{bucket}.s3.{where}.amazonaws.com"

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r})"

    def put(self, key: str, data: IO[bytes], content_type: str) -> str:
        try:
            self.client.upload_fileobj(data, self.bucket, self.prefix + key, ExtraArgs={"ContentType": content_type})
        except Exception as exc:  # noqa: BLE001 -- botocore's errors: a transient store failure
            raise CopyError(f"the result bucket refused the output ({type(exc).__name__})", permanent=False) from None
        return f"{self.base_url}/{self.prefix}{key}"

    def owns(self, url: str) -> bool:
        return isinstance(url, str) and url.startswith(f"{self.base_url}/{self.prefix}")


# --- fetching without being a proxy into our own network -----------------------------------


def _blocked(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


Resolver = Callable[[str, int], Sequence[str]]


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise CopyError(f"the output's host does not resolve ({type(exc).__name__})", permanent=False) from None
    return sorted({str(info[4][0]) for info in infos})


@dataclass
class Fetched:
    file: IO[bytes]
    content_type: str
    size: int


@dataclass
class SafeFetcher:
    max_bytes: int = MAX_BYTES
    deadline_s: float = FETCH_DEADLINE_S
    allowed_types: tuple[str, ...] = ALLOWED_TYPES
    allow_hosts: frozenset[str] = frozenset()  # test-only: hosts exempt from the address check
    resolver: Resolver = system_resolver
    transport: httpx.BaseTransport | None = None
    clock: Callable[[], float] = time.monotonic
    _client: httpx.Client | None = field(default=None, repr=False)

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(min(30.0, self.deadline_s), connect=10.0),
                follow_redirects=False,
                transport=self.transport,
                trust_env=False,
                headers={"User-Agent": "rivya-results/1"},
            )
        return self._client

    def _pinned(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """The URL to connect to (the host replaced by a checked address), its Host header and
        the TLS server name: the name is resolved once, here, and what is checked is what is used."""
        if url.scheme not in ("http", "https"):
            raise CopyError(f"an output URL with scheme {url.scheme!r} is refused", permanent=True)
        if url.userinfo:
            raise CopyError("an output URL carrying credentials is refused", permanent=True)
        host = url.host
        if not host:
            raise CopyError("an output URL without a host is refused", permanent=True)
        port = url.port or (443 if url.scheme == "https" else 80)
        if host in self.allow_hosts:
            return url, {}, {}
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        addrs = [str(literal)] if literal is not None else list(self.resolver(host, port))
        if not addrs:
            raise CopyError("the output's host does not resolve", permanent=False)
        bad = [a for a in addrs if _blocked(a)]
        if bad:
            raise CopyError(
                "an output URL that points into a private, loopback or link-local network is refused", permanent=True
            )
        if literal is not None:
            return url, {}, {}
        pinned = url.copy_with(host=addrs[0])
        headers = {"Host": url.netloc.decode()}
        ext = {"sni_hostname": host} if url.scheme == "https" else {}
        return pinned, headers, ext

    def fetch(self, source: str) -> Fetched:
        start = self.clock()
        try:
            url = httpx.URL(source)
        except (httpx.InvalidURL, TypeError):
            raise CopyError("an output URL that is not a URL", permanent=True) from None
        origin_host = url.host
        for _hop in range(MAX_REDIRECTS + 1):
            target, headers, ext = self._pinned(url)
            try:
                with self._http().stream("GET", target, headers=headers, extensions=ext) as resp:
                    if resp.is_redirect:
                        nxt = url.join(resp.headers.get("location", ""))
                        if nxt.host != origin_host:
                            raise CopyError("the output URL redirects to another host", permanent=True)
                        url = nxt
                        continue
                    return self._body(resp, start)
            except httpx.TimeoutException:
                raise CopyError("the output's server did not answer in time", permanent=False) from None
            except httpx.HTTPError as exc:
                raise CopyError(f"the output could not be fetched ({type(exc).__name__})", permanent=False) from None
        raise CopyError(f"the output URL redirects more than {MAX_REDIRECTS} times", permanent=True)

    def _body(self, resp: httpx.Response, start: float) -> Fetched:
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise CopyError(f"the output's server answered HTTP {resp.status_code}", permanent=False)
        if resp.status_code != 200:
            raise CopyError(f"the output's server answered HTTP {resp.status_code}", permanent=True)
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if not any(ctype.startswith(t) for t in self.allowed_types):
            raise CopyError(f"an output of type {ctype or 'unknown'!r} is refused", permanent=True)
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise CopyError(f"the output is over {self.max_bytes} bytes", permanent=True)
        out = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        size = 0
        try:
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise CopyError(f"the output is over {self.max_bytes} bytes", permanent=True)
                if self.clock() - start > self.deadline_s:
                    raise CopyError(f"the output did not arrive within {self.deadline_s:g} s", permanent=False)
                out.write(chunk)
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return Fetched(out, ctype, size)


def provider_retention_s(url: str) -> float | None:
    """How long the provider keeps the output at url, when url is a known provider's (None: not
    known to expire: ours, or a host without a documented retention)."""
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        return None
    return next((s for h, s in PROVIDER_RETENTION_S.items() if host == h or host.endswith("." + h)), None)


# --- the copier the lifecycle calls -----------------------------------------------------------


def result_key(task_id: int, index: int, source: str, content_type: str) -> str:
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"{int(task_id)}/{index}-{digest}{EXTENSIONS.get(content_type, '.bin')}"


class ResultCopier:
    """Fetch each provider URL safely and put it in the store; our URLs in the same order."""

    def __init__(self, store: ResultStore, fetcher: SafeFetcher | None = None, deadline_s: float = COPY_DEADLINE_S):
        self.store = store
        self.fetcher = fetcher or SafeFetcher()
        self.deadline_s = deadline_s

    def __repr__(self) -> str:
        return f"ResultCopier({self.store!r})"

    def owns_all(self, urls: Iterable[str]) -> bool:
        urls = list(urls)
        return bool(urls) and all(self.store.owns(u) for u in urls)

    def copy(self, task_id: int, urls: Sequence[str]) -> tuple[str, ...]:
        ours = []
        for i, source in enumerate(urls):
            if self.store.owns(source):
                ours.append(source)
                continue
            got = self.fetcher.fetch(source)
            try:
                ours.append(
                    self.store.put(result_key(task_id, i, source, got.content_type), got.file, got.content_type)
                )
            except OSError as exc:
                raise CopyError(
                    f"the result store could not write the output ({type(exc).__name__})", permanent=False
                ) from None
            finally:
                got.file.close()
        return tuple(ours)


def copier_from_env(environ: Mapping[str, str] | None = None) -> ResultCopier:
    """The live deployment's copier: the configured bucket, else the configured folder
    (default data/results/)."""
    env = os.environ if environ is None else environ
    base_url = env.get(RESULTS_BASE_URL_ENV) or None
    allow = frozenset(h.strip() for h in env.get(TEST_ALLOW_HOSTS_ENV, "").split(",") if h.strip())
    if allow - LOOPBACK_NAMES:
        raise ValidationError(
            f"{TEST_ALLOW_HOSTS_ENV} may name only loopback hosts (127.0.0.1, ::1, localhost)", code="results_invalid"
        )
    fetcher = SafeFetcher(allow_hosts=allow)
    bucket = env.get(RESULTS_S3_BUCKET_ENV)
    if bucket:
        return ResultCopier(
            S3Store(
                bucket,
                prefix=env.get(RESULTS_S3_PREFIX_ENV, ""),
                base_url=base_url,
                endpoint_url=env.get(RESULTS_S3_ENDPOINT_ENV) or None,
            ),
            fetcher,
        )
    return ResultCopier(LocalFolderStore(env.get(RESULTS_DIR_ENV) or DEFAULT_DIR, base_url), fetcher)
