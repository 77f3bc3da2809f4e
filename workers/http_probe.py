"""The health worker's `http_endpoint` check: one GET through httpx, TLS verified unless the agent's config says not.

Only the status line matters (2xx is alive), so the body is never read. Each probe opens a connection of
its own (no keep-alive): "the endpoint accepts connections" is part of what is checked. Proxies from the
environment are ignored: the endpoint is the agent's own, usually on loopback (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import httpx

USER_AGENT = "agentd-health"


class EndpointProbe:
    """GETs agents' health URLs; keeps one client per TLS setting (CA files load once, not per probe)."""

    def __init__(self) -> None:
        # (ca_file, verify) -> (the CA file's mtime when loaded, client): a rotated CA file is loaded afresh.
        self._clients: dict[tuple[str | None, bool], tuple[int | None, httpx.AsyncClient]] = {}
        self._closing: set[asyncio.Task] = set()

    def _client(self, ca_file: str | None, verify: bool) -> httpx.AsyncClient:
        key = (ca_file, verify)
        mtime = Path(ca_file).stat().st_mtime_ns if ca_file is not None and verify else None
        known = self._clients.get(key)
        if known is not None and known[0] == mtime:
            return known[1]
        client = httpx.AsyncClient(
            verify=tls_context(ca_file, verify), trust_env=False, follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0), headers={"User-Agent": USER_AGENT},
        )
        self._clients[key] = (mtime, client)
        if known is not None:
            task = asyncio.get_running_loop().create_task(known[1].aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    async def get(self, url: str, timeout: float, *, ca_file: str | None = None, verify: bool = True) -> tuple[bool, str]:
        """(True, "HTTP 200") on 2xx, else (False, why). Never takes longer than timeout, DNS and TLS included."""
        try:
            client = self._client(ca_file, verify)
            async with asyncio.timeout(timeout):
                async with client.stream("GET", url, timeout=timeout) as response:
                    code = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return False, f"no answer within {timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            return False, describe(exc)
        except Exception as exc:  # e.g. an ExceptionGroup from the transport's task group: a failed probe, never a dead task
            return False, describe(exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) and exc.exceptions else exc)
        return 200 <= code < 300, f"HTTP {code}"

    async def aclose(self) -> None:
        clients, self._clients = [c for _, c in self._clients.values()], {}
        for client in clients:
            await client.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)


def tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """The system's trust store, or only `ca_file`; `verify=False` (explicit, per agent) checks nothing.

    Raises OSError/ssl.SSLError for a CA file that cannot be read; the probe reports that as its failure.
    """
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(Path(ca_file)))
    return ssl.create_default_context()


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed probe: the TLS or socket error underneath httpx's wrapper if there is one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: {seen.verify_message or seen.reason or seen}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            # asyncio's text names the address, which the log line has already; the errno says why.
            return os.strerror(seen.errno) if isinstance(seen.errno, int) and seen.errno > 0 else seen.strerror
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"not an HTTP answer: {exc}"
    return str(exc) or type(exc).__name__
