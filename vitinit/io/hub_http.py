"""Bounded time and memory for every Hugging Face Hub call (``convert hf://…``, ``publish``).

huggingface_hub's shared HTTP client has no timeout (its API calls wait forever on a server that accepts
and never answers) and retries timeouts with backoff. Inside :func:`bounded_hub` its client comes from
our factory (huggingface_hub's public ``set_client_factory``), whose transport:

* caps every request's connect/read/write timeout at ``$VITINIT_HUB_TIMEOUT`` seconds (default 20);
* counts failed attempts (timeouts, refused or dropped connections) over the whole call and, at the
  ``$VITINIT_HUB_ATTEMPTS``-th (default 3), raises :class:`HubUnreachable` naming the host, which
  huggingface_hub does not retry;
* reads at most :data:`MAX_API_BODY` bytes of any API answer (``/api/…`` and the git LFS batch endpoint):
  JSON of a few KB to a few MB, read whole into memory. Everything else is a file streaming to disk:
  ``/resolve/`` and wherever it redirects (the real Hub sends weights from a CDN or the Xet bridge, at paths
  that say nothing of ``/resolve/``).

File downloads stream to disk (huggingface_hub's own code) and are not capped here; the files they give are
read through the capped readers (:func:`vitinit.io.files.read_json`, the checkpoint readers).

A file the hub stores on Xet would go to ``hf_xet``'s own (Rust) client, which this transport never sees.
Inside :func:`bounded_hub` huggingface_hub's documented switch ``HF_HUB_DISABLE_XET`` is on, so such a file
comes over plain HTTP from ``/resolve/`` like any other (the hub serves every Xet file there too; slower
for multi-GB files, bounded like everything else). ``VITINIT_HUB_XET=1`` keeps Xet, with its own limits.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import httpx2

from vitinit.errors import DownloadError, first_line
from vitinit.io.env import env_flag

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_ATTEMPTS = 3
MAX_API_BODY = 64 << 20


class HubUnreachable(DownloadError):
    """A host did not answer within the timeout, or its answer broke a bound, too often."""


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if 0 < value < 3600 else default


class HubLimits:
    """The budget of one bounded call: timeout per socket operation, failed attempts left, body cap."""

    def __init__(self, timeout_s: float, attempts: int, max_body: int) -> None:
        self.timeout_s, self.attempts, self.max_body = timeout_s, attempts, max_body
        self.failures = 0
        self.error: HubUnreachable | None = None  # the last failure, for the caller's message
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> HubLimits:
        attempts = int(_env_float("VITINIT_HUB_ATTEMPTS", DEFAULT_ATTEMPTS))
        return cls(_env_float("VITINIT_HUB_TIMEOUT", DEFAULT_TIMEOUT_S), max(attempts, 1), MAX_API_BODY)

    def fail(self, host: str, why: str) -> HubUnreachable:
        """The error for ``host``; kept as :attr:`error` for the caller, whose library may wrap or swallow
        it (huggingface_hub turns a timeout in ``snapshot_download`` into "not found locally")."""
        err = HubUnreachable(f"{host} {why}")
        with self._lock:
            self.error = err
        return err

    def failed_attempt(self, host: str, e: Exception) -> HubUnreachable | None:
        """Count a failed attempt; the error to raise instead of ``e`` once the budget is spent."""
        with self._lock:
            self.failures += 1
            spent = self.failures >= self.attempts
        timed_out = isinstance(e, httpx2.TimeoutException)
        why = f"did not answer within {self.timeout_s:g} s" if timed_out else f"failed ({first_line(e)})"
        err = self.fail(host, f"{why}; gave up after {self.failures} attempt(s)" if spent else why)
        return err if spent else None


def _is_api_answer(path: str) -> bool:
    """Whether a response is one of the Hub's API answers (JSON read whole), not a file download."""
    return path.startswith("/api/") or "/info/lfs/objects/" in path


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.3g} MiB"


class _CappedStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, limits: HubLimits, host: str) -> None:
        self.inner, self.limits, self.host = inner, limits, host

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        try:
            for chunk in self.inner:
                seen += len(chunk)
                if seen > self.limits.max_body:
                    raise self.limits.fail(self.host, f"sent an answer over {_mib(self.limits.max_body)}")
                yield chunk
        except (httpx2.TimeoutException, httpx2.NetworkError) as e:
            raise (self.limits.failed_attempt(self.host, e) or e) from None

    def close(self) -> None:
        self.inner.close()


class _BoundedTransport(httpx2.BaseTransport):
    def __init__(self, inner: httpx2.BaseTransport, limits: HubLimits) -> None:
        self.inner, self.limits = inner, limits

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        host, t = request.url.host, self.limits.timeout_s
        asked = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            k: t if asked.get(k) is None else min(asked[k], t) for k in ("connect", "read", "write", "pool")
        }
        try:
            response = self.inner.handle_request(request)
        except (httpx2.TimeoutException, httpx2.NetworkError) as e:
            raise (self.limits.failed_attempt(host, e) or e) from None
        if _is_api_answer(request.url.path):  # read whole into memory by the caller
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.limits.max_body:
                response.close()
                raise self.limits.fail(host, f"announced an answer of {_mib(int(length))}")
            response.stream = _CappedStream(response.stream, self.limits, host)
        return response

    def close(self) -> None:
        self.inner.close()


def _client_factory(limits: HubLimits):
    try:  # huggingface_hub's request hook (request ids, debug logging); private, so optional
        from huggingface_hub.utils._http import hf_request_event_hook

        hooks = {"request": [hf_request_event_hook]}
    except ImportError:  # pragma: no cover - depends on the huggingface_hub version
        hooks = {}

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks=hooks,
            follow_redirects=True,
            timeout=limits.timeout_s,
            transport=_BoundedTransport(httpx2.HTTPTransport(), limits),
        )

    return factory


@contextlib.contextmanager
def bounded_hub(limits: HubLimits | None = None) -> Iterator[HubLimits]:
    """While inside, huggingface_hub's HTTP calls are bounded by ``limits`` (default: from the
    environment); afterwards its default client is back."""
    from huggingface_hub import constants, set_client_factory

    limits = limits or HubLimits.from_env()
    set_client_factory(_client_factory(limits))
    xet_was_disabled = constants.HF_HUB_DISABLE_XET
    if not env_flag("VITINIT_HUB_XET"):
        constants.HF_HUB_DISABLE_XET = True  # read at call time by huggingface_hub's is_xet_available()
    try:
        yield limits
    finally:
        constants.HF_HUB_DISABLE_XET = xet_was_disabled
        try:
            from huggingface_hub.utils._http import default_client_factory

            set_client_factory(default_client_factory)
        except ImportError:  # pragma: no cover - depends on the huggingface_hub version
            pass
