"""TLS for accepted connections: the server context, a non-blocking handshake, what it agreed.

Design: the handshake is a *prelude*, run on an accepted socket before any handler thread
or task sees it, driven by whichever loop owns the socket. ``HandshakeStep.advance()``
makes one non-blocking attempt and says what it waits for (``"read"``/``"write"``) or
returns the negotiated ``TLSInfo``; the loop waits on the descriptor and enforces the
deadline, so a client that stalls mid-handshake costs a socket, never a worker. Nothing
here knows about loops, servers or handlers; the serving core wires it in.

Methods for the caller:

- ``server_context(certfile, keyfile, ...)``: a hardened ``ssl.SSLContext``.
- ``tls_handshake.HandshakeStep(sock, context)`` then ``advance()`` until it returns
  ``TLSInfo`` (the handshake and its failure reasons live in ``tls_handshake.py``).
- ``tls_info(ssl_object)``: ``TLSInfo`` from an ``ssl.SSLSocket`` (sync modes) or the
  ``ssl.SSLObject`` an asyncio transport gives as ``get_extra_info("ssl_object")``.
- ``ContextHolder``: the current context; ``replace()`` and ``reload_from_files()``
  change it for new connections only.

Error handling: a handshake that fails raises ``TLSHandshakeError`` with a ``reason``
key for counting (the peer's fault); files that cannot be used raise
``TLSConfigurationError`` naming the file (ours). No bare ``ssl.SSLError`` leaves here.
"""

from __future__ import annotations

import os
import ssl
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from .errors import ConfigurationError, TLSConfigurationError

__all__ = [
    "ContextHolder",
    "TLSInfo",
    "TLSSettings",
    "record_server_names",
    "server_context",
    "tls_info",
]

#: The lowest protocol we agree to. TLS 1.0 and 1.1 are deprecated by RFC 8996, and
#: OpenSSL 3 at its default security level (2) refuses them anyway: allowing them here
#: would only move the failure from start-up to the first old client.
ALLOWED_MINIMUM_VERSIONS = frozenset({ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3})


PeerCertificate = dict[str, Any]
SSLConnection = ssl.SSLSocket | ssl.SSLObject
#: What ``context.sni_callback`` is called with. The name is None when the client sent
#: none (typeshed says ``str``; CPython passes None), the first argument is an SSLSocket
#: or SSLObject.
SNICallback = Callable[[Any, Any, ssl.SSLContext], "int | None"]


# -- what the handshake agreed ------------------------------------------------------------


@dataclass(frozen=True)
class TLSInfo:
    """The negotiated details of one TLS connection, as a handler sees them in ``self.tls``.

    ``version``: ``"TLSv1.3"``; ``cipher``: the suite's OpenSSL name; ``alpn``: the
    protocol both sides chose (``"h2"``), or None; ``server_name``: the SNI name the client
    asked for, or None; ``peer_certificate``: the client certificate as ``getpeercert()``
    decodes it, present only when it was verified (mutual TLS); ``peer_certificate_der``:
    the certificate the client sent, verified or not, as DER bytes.
    """

    version: str
    cipher: str
    alpn: str | None
    server_name: str | None
    peer_certificate: PeerCertificate | None = field(default=None, hash=False)
    peer_certificate_der: bytes | None = None


def tls_info(ssl_object: SSLConnection) -> TLSInfo:
    """``TLSInfo`` of a connection whose handshake is complete.

    Takes an ``ssl.SSLSocket`` (the sync modes) or an ``ssl.SSLObject`` (asyncio and
    uvloop: ``transport.get_extra_info("ssl_object")``).
    """
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    if version is None or cipher is None:
        raise ValueError(f"the TLS handshake of {ssl_object!r} is not complete")
    decoded = ssl_object.getpeercert()
    return TLSInfo(
        version=version,
        cipher=cipher[0],
        alpn=ssl_object.selected_alpn_protocol(),
        server_name=_recorded_server_name(ssl_object),
        # An unverified certificate decodes as {}: report it as absent, keep the bytes.
        peer_certificate=dict(decoded) if decoded else None,
        peer_certificate_der=ssl_object.getpeercert(binary_form=True),
    )


# -- the SNI name, per connection ---------------------------------------------------------
#
# Python offers the name a client asked for only to ``context.sni_callback``, and one
# context (with its one callback) serves every connection at once. So the callback does
# not keep the name: it files it under the object the callback receives, which is the
# connection's own ``SSLSocket`` (sync) or ``SSLObject`` (asyncio, uvloop), the same object
# ``tls_info`` is later given. The table holds those objects weakly, so an entry goes
# when its connection does; a lock keeps it consistent across serving threads.

_server_names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_server_names_lock = threading.Lock()


def _recorded_server_name(ssl_object: SSLConnection) -> str | None:
    with _server_names_lock:
        return _server_names.get(ssl_object)


def record_server_names(context: ssl.SSLContext) -> None:
    """Make ``context`` remember each connection's SNI name for ``tls_info``.

    A callback already set (say, one that picks a certificate by name) keeps working:
    it is called after the name is recorded and its answer is returned. Calling this
    again on the same context changes nothing.
    """
    previous = cast(SNICallback | None, context.sni_callback)
    if previous is not None and getattr(previous, "records_server_names", False):
        return

    def remember_server_name(
        connection: Any, server_name: str | None, ssl_context: ssl.SSLContext
    ) -> int | None:
        if server_name is not None:
            with _server_names_lock:
                _server_names[connection] = server_name
        return previous(connection, server_name, ssl_context) if previous else None

    remember_server_name.records_server_names = True  # type: ignore[attr-defined]
    context.sni_callback = remember_server_name


# -- the server context -------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    """The files and options a server context is made from, kept for reloading."""

    certfile: str
    keyfile: str | None = None
    cafile: str | None = None
    require_client_cert: bool = False
    alpn: tuple[str, ...] = ()
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2

    def build(self) -> ssl.SSLContext:
        """A fresh context from the files as they are now."""
        return server_context(
            self.certfile,
            self.keyfile,
            cafile=self.cafile,
            require_client_cert=self.require_client_cert,
            alpn=self.alpn,
            minimum_version=self.minimum_version,
        )


def server_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    cafile: str | os.PathLike[str] | None = None,
    require_client_cert: bool = False,
    alpn: Sequence[str] = (),
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """A server-side ``SSLContext`` with safe defaults, or ``TLSConfigurationError``.

    ``certfile``: PEM, the certificate followed by its intermediates (a "full chain");
    ``keyfile``: its PEM private key, unencrypted (None: the key is in ``certfile``).
    ``cafile``: PEM CAs that issue *client* certificates. With it, a client certificate is
    asked for and, if sent, must verify; ``require_client_cert=True`` also refuses
    clients without one (mutual TLS). ``alpn``: protocols offered, in our order of
    preference (``("h2", "http/1.1")``). ``minimum_version``: TLS 1.2 or 1.3.

    The choices, on top of ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` (which
    brings Python's vetted cipher list at OpenSSL security level 2, no SSLv2/3, no
    compression (CRIME), our cipher order over the client's, fresh (EC)DH keys):

    - System CAs are never trusted for client certificates; only ``cafile`` is. With
      the system store, any publicly issued certificate would pass mutual TLS.
    - Client-initiated renegotiation is off (``OP_NO_RENEGOTIATION``): each one costs
      the server a full handshake's CPU, a cheap denial of service (CVE-2011-1473); TLS
      1.3 has none to begin with.
    - An encrypted key is refused with a clear error instead of OpenSSL prompting for a
      passphrase on the terminal, which would hang a server started by a supervisor.
    - The SNI name of each connection is recorded for ``TLSInfo.server_name``.

    ``SSLKEYLOGFILE`` in the environment makes the base context log session keys there,
    as every ``ssl`` default context does: a debugging aid that must not be set in
    production.
    """
    if minimum_version not in ALLOWED_MINIMUM_VERSIONS:
        raise ConfigurationError(
            f"minimum_version must be TLSv1_2 or TLSv1_3, got {minimum_version!r}: TLS 1.0 "
            "and 1.1 are deprecated (RFC 8996) and OpenSSL 3 refuses them by default"
        )
    if require_client_cert and cafile is None:
        raise TLSConfigurationError(
            "require_client_cert needs cafile: the CA certificates that issue the client "
            "certificates to accept"
        )
    cert_path = os.fspath(certfile)
    key_path = os.fspath(keyfile) if keyfile is not None else None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = minimum_version
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_certificate_chain(context, cert_path, key_path)
    if cafile is not None:
        _load_client_cas(context, os.fspath(cafile))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if alpn:
        context.set_alpn_protocols(_checked_alpn(alpn))
    record_server_names(context)
    return context


def _read_file(path: str, role: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise TLSConfigurationError(
            f"cannot read the TLS {role} file {path!r}: {exc.strerror or exc}", path
        ) from None


def _load_certificate_chain(context: ssl.SSLContext, cert_path: str, key_path: str | None) -> None:
    certificate = _read_file(cert_path, "certificate")
    key = _read_file(key_path, "private key") if key_path is not None else certificate
    shown_key_path = key_path or cert_path

    def refuse_passphrase() -> bytes:
        raise TLSConfigurationError(
            f"the private key in {shown_key_path!r} is encrypted; sockserve does not prompt "
            "for passphrases: decrypt it (openssl pkey -in KEY -out KEY.plain) and keep "
            "the file readable only by the server's user",
            shown_key_path,
        )

    try:
        context.load_cert_chain(cert_path, key_path, password=refuse_passphrase)
    except TLSConfigurationError:
        raise  # from refuse_passphrase
    except ssl.SSLError as exc:
        reason = exc.reason or "OpenSSL cannot parse it"
        if reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigurationError(
                f"the private key in {shown_key_path!r} does not belong to the certificate "
                f"in {cert_path!r}",
                shown_key_path,
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in certificate:
            blamed, what = cert_path, "PEM certificate"
        elif b"PRIVATE KEY-----" not in key:
            blamed, what = shown_key_path, "PEM private key"
        else:
            raise TLSConfigurationError(
                f"{cert_path!r} and {shown_key_path!r} hold no usable certificate and key "
                f"({reason})"
            ) from None
        raise TLSConfigurationError(f"{blamed!r} holds no {what} ({reason})", blamed) from None
    except OSError as exc:  # the file changed between our read and OpenSSL's
        raise TLSConfigurationError(
            f"cannot load the TLS certificate {cert_path!r}: {exc}", cert_path
        ) from None


def _load_client_cas(context: ssl.SSLContext, ca_path: str) -> None:
    _read_file(ca_path, "CA")
    try:
        context.load_verify_locations(cafile=ca_path)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or "OpenSSL cannot parse it"
        raise TLSConfigurationError(
            f"{ca_path!r} holds no usable PEM CA certificates ({reason})", ca_path
        ) from None


def _checked_alpn(alpn: Sequence[str]) -> list[str]:
    if isinstance(alpn, str):
        raise ConfigurationError(f"alpn must be a sequence of names, got the string {alpn!r}")
    for name in alpn:
        # RFC 7301 §3.1: a protocol name is 1 to 255 bytes.
        if not isinstance(name, str) or not 1 <= len(name.encode()) <= 255:
            raise ConfigurationError(f"ALPN protocol names are 1-255 byte strings, got {name!r}")
    return list(alpn)


# -- the current context, swappable ------------------------------------------------------


class ContextHolder:
    """The context new connections get; ``replace`` and reloads swap it atomically.

    A connection keeps the context it was wrapped with, so a swap never disturbs one
    that is established or mid-handshake. ``context`` is read without locking (one
    reference read); swaps and reloads are serialised by a lock.

    ``reload_from_files()`` (for SIGHUP, or a certificate renewed by an ACME client)
    builds a new context from the files and options the holder was made from. If the
    new files are bad it raises ``TLSConfigurationError`` and the current context
    stays: a botched renewal must not take a running server down.
    """

    def __init__(self, context: ssl.SSLContext, *, settings: TLSSettings | None = None) -> None:
        self._context = context
        self._settings = settings
        self._lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        certfile: str | os.PathLike[str],
        keyfile: str | os.PathLike[str] | None = None,
        *,
        cafile: str | os.PathLike[str] | None = None,
        require_client_cert: bool = False,
        alpn: Sequence[str] = (),
        minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    ) -> ContextHolder:
        """A holder whose context ``server_context`` makes, and remakes on reload."""
        settings = TLSSettings(
            certfile=os.fspath(certfile),
            keyfile=os.fspath(keyfile) if keyfile is not None else None,
            cafile=os.fspath(cafile) if cafile is not None else None,
            require_client_cert=require_client_cert,
            alpn=tuple(alpn),
            minimum_version=minimum_version,
        )
        return cls(settings.build(), settings=settings)

    @property
    def context(self) -> ssl.SSLContext:
        """The context to wrap the next accepted connection with."""
        return self._context

    @property
    def settings(self) -> TLSSettings | None:
        """What ``reload_from_files`` rebuilds from (None: the holder got a bare context)."""
        return self._settings

    def replace(self, new_context: ssl.SSLContext) -> ssl.SSLContext:
        """Use ``new_context`` for new connections; returns the one it replaces.

        ``reload_from_files`` then no longer applies: the holder cannot know which files
        a context from elsewhere came from.
        """
        if not isinstance(new_context, ssl.SSLContext):
            raise ConfigurationError(f"expected an ssl.SSLContext, got {new_context!r}")
        with self._lock:
            old, self._context, self._settings = self._context, new_context, None
        return old

    def reload_from_files(self) -> ssl.SSLContext:
        """Re-read the certificate, key and CA files; returns the new context."""
        with self._lock:
            if self._settings is None:
                raise ConfigurationError(
                    "this ContextHolder was given a context, not files: nothing to reload "
                    "(make it with ContextHolder.from_files)"
                )
            self._context = self._settings.build()
            return self._context


# -- the handshake, one step at a time ------------------------------------------------------
