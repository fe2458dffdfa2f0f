"""TLS: ``rediss://`` with certificates made here, against ``redis-server``s that speak only TLS.

A throwaway CA signs the server's certificate (for 127.0.0.1 and localhost) and a client's; a
second, unrelated CA signs a rogue server's and a rogue client's. Every server listens on TLS
only (``--port 0 --tls-port N``), so whatever works here went through TLS. What must hold:

- a client that trusts the CA works end to end, sync and async, with the TLS options as keyword
  arguments or in the URL's query string (redis-py reads ``ssl_ca_certs``, ``ssl_certfile``,
  ``ssl_keyfile`` and ``ssl_cert_reqs`` from it), and so does the CLI, given such a URL;
- a plaintext client, a client that trusts the other CA (or only the system's), a server whose
  certificate comes from the other CA or names another host, and, with ``tls-auth-clients yes``,
  a client without a certificate or with one from the other CA are all refused, as
  :class:`~registry.errors.BackendUnavailable`, and at once (short socket timeouts: never a hang).

No ``openssl``, no ``redis-server`` or one that cannot serve TLS: skipped, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

import pytest
import redis

from registry import embedded
from registry.cli import main
from registry.errors import BackendUnavailable
from tests.conftest import ROOT, _in_ci, client_factory, model

TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}  # a refusal must not wait on these


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    ca: Pair
    other_ca: Pair  # unrelated to ca
    server: Pair  # by ca, for 127.0.0.1 and localhost
    client: Pair  # by ca, for client authentication
    rogue_server: Pair  # by other_ca, for 127.0.0.1 and localhost
    rogue_client: Pair  # by other_ca
    misnamed_server: Pair  # by ca, for redis.invalid only

    def trust(self, *, client: Pair | None = None) -> dict[str, str]:
        """redis-py's TLS options: trust our CA, and present ``client`` if given."""
        options = {"ssl_ca_certs": str(self.ca.cert)}
        if client is not None:
            options |= {"ssl_certfile": str(client.cert), "ssl_keyfile": str(client.key)}
        return options


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # fast to make, unlike RSA


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))} failed: {done.stderr.strip()}")


def _ca(where: Path, name: str) -> Pair:
    pair = Pair(where / f"{name}.crt", where / f"{name}.key")
    _openssl(
        *("req", "-x509", "-new", *_EC, "-days", "2", "-subj", f"/CN=registry test {name}"),
        *("-keyout", pair.key, "-out", pair.cert),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return pair


def _leaf(where: Path, name: str, ca: Pair, serial: int, *, usage: str, san: str | None = None) -> Pair:
    pair = Pair(where / f"{name}.crt", where / f"{name}.key")
    csr, ext = where / f"{name}.csr", where / f"{name}.ext"
    _openssl("req", "-new", *_EC, "-subj", f"/CN={name}", "-keyout", pair.key, "-out", csr)
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    ext.write_text("\n".join(extensions + ([f"subjectAltName={san}"] if san else [])) + "\n")
    _openssl(
        *("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", str(serial)),
        *("-days", "2", "-extfile", ext, "-out", pair.cert),
    )
    return pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if shutil.which("openssl") is None:
        _unavailable("no openssl on PATH to make the test certificates")
    where = tmp_path_factory.mktemp("tls")
    ca, other = _ca(where, "ca"), _ca(where, "other-ca")
    loopback = "IP:127.0.0.1,DNS:localhost"
    return PKI(
        ca=ca,
        other_ca=other,
        server=_leaf(where, "server", ca, 1, usage="serverAuth", san=loopback),
        client=_leaf(where, "client", ca, 2, usage="clientAuth"),
        rogue_server=_leaf(where, "rogue-server", other, 1, usage="serverAuth", san=loopback),
        rogue_client=_leaf(where, "rogue-client", other, 2, usage="clientAuth"),
        misnamed_server=_leaf(where, "misnamed-server", ca, 3, usage="serverAuth", san="DNS:redis.invalid"),
    )


# -- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(pki: PKI) -> Iterator[embedded.EmbeddedRedis]:
    """TLS only; client certificates not asked for. Skips (fails in CI) if redis-server has no TLS."""
    if embedded.redis_server_path() is None:
        _unavailable("redis-server is not on PATH")
    try:
        started = embedded.start_tls_redis_server(pki.server.cert, pki.server.key, pki.ca.cert, timeout=10)
    except (RuntimeError, redis.ConnectionError) as exc:
        _unavailable(f"redis-server did not start with --tls-port (built without TLS? BUILD_TLS=yes): {exc}")
    with started:
        yield started


@pytest.fixture(scope="module")
def mtls_server(server: embedded.EmbeddedRedis, pki: PKI) -> Iterator[embedded.EmbeddedRedis]:
    """TLS only, ``tls-auth-clients yes``: a client must show a certificate from the CA."""
    probe = pki.trust(client=pki.client)
    with embedded.start_tls_redis_server(
        pki.server.cert, pki.server.key, pki.ca.cert, "--tls-auth-clients", "yes", probe=probe, timeout=10
    ) as started:
        yield started


@pytest.fixture(scope="module")
def rogue_server(server: embedded.EmbeddedRedis, pki: PKI) -> Iterator[embedded.EmbeddedRedis]:
    """Presents a certificate from the other CA (its probe, trusting that CA, proves it is up)."""
    probe = {"ssl_ca_certs": str(pki.other_ca.cert)}
    rogue = pki.rogue_server
    with embedded.start_tls_redis_server(rogue.cert, rogue.key, pki.ca.cert, probe=probe, timeout=10) as started:
        yield started


@pytest.fixture(scope="module")
def misnamed_server(server: embedded.EmbeddedRedis, pki: PKI) -> Iterator[embedded.EmbeddedRedis]:
    """Presents a certificate from the right CA, for redis.invalid rather than 127.0.0.1."""
    probe = pki.trust() | {"ssl_check_hostname": False}
    misnamed = pki.misnamed_server
    with embedded.start_tls_redis_server(misnamed.cert, misnamed.key, pki.ca.cert, probe=probe, timeout=10) as started:
        yield started


def _empty(server: embedded.EmbeddedRedis, pki: PKI) -> None:
    client = redis.Redis.from_url(server.url, **pki.trust(client=pki.client))
    client.flushall()
    client.close()


def with_query(url: str, **options: str | float) -> str:
    """``url`` with redis-py connection options in its query string (percent-encoded)."""
    return f"{url}?{urlencode({k: str(v) for k, v in options.items()})}"


def plaintext(server: embedded.EmbeddedRedis) -> str:
    return server.url.replace("rediss://", "redis://", 1)


# -- clients ----------------------------------------------------------------------------------


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(url, **options)``: a Registry, or an AsyncRegistry behind SyncFacade, by parameter."""
    with client_factory(request.param) as make:
        yield lambda url, **options: make(url, watch=False, **options)


def refused(reg: Any) -> BackendUnavailable:
    """The error a library call raises on ``reg`` (a connection that TLS refuses)."""
    with pytest.raises(BackendUnavailable) as caught:
        reg.refresh()
    cause = caught.value.__cause__
    assert isinstance(cause, redis.ConnectionError), cause
    assert not isinstance(cause, redis.TimeoutError), "refused by TLS, not timed out"
    return caught.value


# -- what works -------------------------------------------------------------------------------


def _use(reg: Any) -> None:
    """Catalog, admission, settlement, the ledger and its statistics, over one connection."""
    plan = reg.sync_models([model(rate_limit={"requests_per_minute": 2}), model(id="gpt-4o-mini")])
    assert plan.applied
    assert [m.key for m in reg.list_models()] == ["openai:gpt-4", "openai:gpt-4o-mini"]
    first = reg.acquire("openai:gpt-4", 1000, 500)
    assert first.allowed
    assert reg.acquire("openai:gpt-4", 10, 10).allowed
    third = reg.acquire("openai:gpt-4", 10, 10)
    assert (third.allowed, third.denied_by) == (False, "requests_per_minute")  # counted in that Redis
    assert reg.settle(first.reservation, 1000, 200)
    assert not reg.settle(first.reservation, 1000, 200)  # once
    record = reg.record_usage("openai:gpt-4o-mini", 100, 100, tenant="acme")
    assert record.recorded
    stats = reg.get_statistics()
    # settled: 1,000 x $30/M + 200 x $60/M = $0.042; recorded: 100 x $30/M + 100 x $60/M = $0.009
    assert (stats.requests, stats.input_tokens, stats.output_tokens) == (2, 1100, 300)
    assert stats.total_cost == Decimal("0.051")
    assert stats.by_tenant["acme"].requests == 1


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual"])
def test_a_client_trusting_the_ca_works_end_to_end(
    connect: Callable[..., Any],
    server: embedded.EmbeddedRedis,
    mtls_server: embedded.EmbeddedRedis,
    pki: PKI,
    mutual: bool,
) -> None:
    target = mtls_server if mutual else server
    _empty(target, pki)
    _use(connect(target.url, **pki.trust(client=pki.client if mutual else None), **TIMEOUTS))


def test_the_tls_options_can_ride_in_the_url(
    connect: Callable[..., Any], mtls_server: embedded.EmbeddedRedis, pki: PKI
) -> None:
    _empty(mtls_server, pki)
    url = with_query(mtls_server.url, **pki.trust(client=pki.client), ssl_cert_reqs="required", socket_timeout=2)
    assert "%2F" in url  # the paths are percent-encoded, and redis-py decodes them
    reg = connect(url)
    assert reg.ping()
    assert reg.refresh() == 0  # an empty catalog, read through TLS


def test_the_cli_over_tls(
    mtls_server: embedded.EmbeddedRedis,
    pki: PKI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _empty(mtls_server, pki)
    url = with_query(mtls_server.url, **pki.trust(client=pki.client))
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": [model(), model(provider="anthropic", id="claude")]}), encoding="utf-8")

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = cli("--redis-url", url, "sync", str(catalog))
    assert code == 0, err
    monkeypatch.setenv("REGISTRY_REDIS_URL", url)  # the same URL from the environment
    code, out, err = cli("--json", "models", "list")
    assert code == 0, err
    assert [f"{m['provider']}:{m['id']}" for m in json.loads(out)] == ["anthropic:claude", "openai:gpt-4"]

    # without our CA (the system's trust store only), and in plaintext: one error line, exit 1
    code, out, err = cli("--redis-url", f"{mtls_server.url}?socket_timeout=2", "models", "list")
    assert (code, out) == (1, "")
    assert "certificate verify failed" in err
    assert "ssl_ca_certs=PATH" in err  # the hint says how to name the CA
    code, out, err = cli("--redis-url", with_query(plaintext(mtls_server), socket_timeout=2), "models", "list")
    assert (code, out) == (1, "")
    assert err.startswith("registry: error: Redis unavailable")
    assert len(err.splitlines()) == 1  # one line, no traceback


def test_the_readme_tls_example_runs(server: embedded.EmbeddedRedis, pki: PKI) -> None:
    """The README's TLS example (fenced ``py``: it needs this TLS server, not the test Redis)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"### TLS\n.*?```py\n(.*?)```", readme, re.S)
    assert found is not None, "README.md has no ### TLS section with a ```py example"
    code = found.group(1)
    assert "/etc/registry/tls/client.crt" in code  # mutual TLS is shown
    for shown, here in [
        ("rediss://redis.internal:6380/0", server.url),
        ("/etc/registry/tls/ca.crt", str(pki.ca.cert)),
        ("/etc/registry/tls/client.crt", str(pki.client.cert)),
        ("/etc/registry/tls/client.key", str(pki.client.key)),
    ]:
        assert shown in code
        code = code.replace(shown, here)
    scope: dict[str, Any] = {}
    exec(code, scope)
    reg = scope["reg"]
    try:
        assert reg.ping()
    finally:
        reg.close()


# -- what is refused --------------------------------------------------------------------------


def test_a_plaintext_client_is_refused(connect: Callable[..., Any], server: embedded.EmbeddedRedis, pki: PKI) -> None:
    assert connect(server.url, **pki.trust(), **TIMEOUTS).ping()  # the server is up, for TLS
    error = refused(connect(plaintext(server), **TIMEOUTS))
    assert "127.0.0.1" in str(error)


@pytest.mark.parametrize("trusts", ["other-ca", "system"])
def test_a_client_that_does_not_trust_the_ca_is_refused(
    connect: Callable[..., Any], server: embedded.EmbeddedRedis, pki: PKI, trusts: str
) -> None:
    options = {"ssl_ca_certs": str(pki.other_ca.cert)} if trusts == "other-ca" else {}
    error = refused(connect(server.url, **options, **TIMEOUTS))
    assert "certificate verify failed" in str(error)


def test_a_server_certificate_from_another_ca_is_refused(
    connect: Callable[..., Any], rogue_server: embedded.EmbeddedRedis, pki: PKI
) -> None:
    error = refused(connect(rogue_server.url, **pki.trust(), **TIMEOUTS))
    assert "certificate verify failed" in str(error)


def test_a_server_certificate_for_another_host_is_refused(
    connect: Callable[..., Any], misnamed_server: embedded.EmbeddedRedis, pki: PKI
) -> None:
    error = refused(connect(misnamed_server.url, **pki.trust(), **TIMEOUTS))
    assert "mismatch" in str(error)  # "IP address mismatch": the chain is fine, the name is not


@pytest.mark.parametrize("shows", ["no-certificate", "other-ca-certificate"])
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    connect: Callable[..., Any], mtls_server: embedded.EmbeddedRedis, pki: PKI, shows: str
) -> None:
    assert connect(mtls_server.url, **pki.trust(client=pki.client), **TIMEOUTS).ping()  # the right one gets in
    client = None if shows == "no-certificate" else pki.rogue_client
    # TLS 1.3: the handshake ends before the server checks; the client then reads its alert
    # ("certificate required", "unknown ca") or, if the server has closed already, a reset
    refused(connect(mtls_server.url, **pki.trust(client=client), **TIMEOUTS))
