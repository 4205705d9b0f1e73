"""Content scan for credentials: every file that goes into a sandbox passes through it.

What counts as a credential, by content, whatever the file is called:

* ``private key``: a PEM private-key block (``-----BEGIN [RSA|EC|OPENSSH|ENCRYPTED|…] PRIVATE
  KEY-----`` with a base64 body): a user key, a proxy's key, an ssh key;
* ``proxy certificate``: a PEM certificate that is an RFC 3820 proxy (the proxyCertInfo
  extension, or a legacy ``CN=proxy`` / ``CN=limited proxy`` subject);
* ``certificate``: a PEM certificate that is neither a CA nor part of a CA bundle (a user or
  host certificate, which names the user);
* ``password``: a ``password=`` / ``password:`` line (``passwd``, ``secret``,
  ``client_secret`` too) in a config-like file (not in Python source, where such words are
  parameter names), or a ``.netrc`` ``password`` entry;
* ``bearer token``: ``Bearer <token>``;
* ``JSON web token``: ``eyJ….eyJ….<signature>``, the form of OIDC access and refresh tokens.

Public CA bundles (every certificate a CA, such as certifi's ``cacert.pem``) are allowed.

Speed: literal prefilters (``bytes.find``, memchr speed) pick the few places where a regex
runs, so scanning a 64 MiB sandbox costs well under a second (``bench/bench_sandbox.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

#: suffixes of files whose ``key = value`` lines are read as settings
CONFIG_SUFFIXES = frozenset({"", ".cfg", ".conf", ".ini", ".yaml", ".yml", ".json", ".toml",
                             ".env", ".txt", ".properties", ".netrc", ".sh", ".rc"})

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]{0,40})-----\s*([A-Za-z0-9+/=\s:,\-]{40,}?)"
                  rb"-----END \1-----")
_PASSWORD = re.compile(rb"""^[ \t]*(?:export[ \t]+)?["']?[A-Za-z0-9_.\-]*"""
                       rb"""(?:password|passwd|client_secret|secret)["']?[ \t]*[=:][ \t]*"""
                       rb"""["']?[^\s"'#]{3,}""", re.IGNORECASE | re.MULTILINE)
_NETRC = re.compile(rb"^[ \t]*(?:machine|default)\b[^\n]*\bpassword[ \t]+\S+",
                    re.MULTILINE)
_BEARER = re.compile(rb"\bbearer[ \t]+[A-Za-z0-9\-._~+/]{20,}=*", re.IGNORECASE)
_JWT = re.compile(rb"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}")
# DER fragments (no ASN.1 parser needed): the proxyCertInfo extension OIDs (RFC 3820 and the
# pre-RFC draft), commonName "proxy" / "limited proxy", and basicConstraints with cA TRUE
_PROXY_OIDS = (bytes.fromhex("06082b0601050507010e"), bytes.fromhex("060a2b060104019b50010181"))
_PROXY_CN = re.compile(rb"\x06\x03\x55\x04\x03[\x0c\x13]\x05proxy|"
                       rb"\x06\x03\x55\x04\x03[\x0c\x13]\x0dlimited proxy")
_BASIC_CONSTRAINTS_CA = re.compile(rb"\x06\x03\x55\x1d\x13(?:\x01\x01\xff)?\x04.{1,4}?\x30"
                                   rb".?\x01\x01\xff", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """A credential found in a file: what kind, and where (1-based line)."""

    kind: str
    line: int


def scan(name: str, data: bytes) -> Finding | None:
    """The first credential in ``data`` (the content of the file ``name``); None if clean."""
    found = _scan_pem(data)
    if found is None:
        found = _at_literal(_BEARER, data, (b"earer", b"EARER"), -1, "bearer token")
    if found is None:
        found = _at_literal(_JWT, data, (b"eyJ",), 0, "JSON web token")
    if found is None and PurePosixPath(name).suffix.lower() in CONFIG_SUFFIXES:
        lowered = data.lower()
        if b"passw" in lowered or b"secret" in lowered:
            found = _first(_PASSWORD, data, "password") or _first(_NETRC, data, "password")
    return found


def _first(pattern: re.Pattern[bytes], data: bytes, kind: str) -> Finding | None:
    match = pattern.search(data)
    return None if match is None else Finding(kind, _line(data, match.start()))


def _at_literal(pattern: re.Pattern[bytes], data: bytes, literals: tuple[bytes, ...],
                shift: int, kind: str) -> Finding | None:
    """``pattern`` tried only where one of ``literals`` occurs (``shift`` bytes before it):
    ``bytes.find`` runs at memchr speed, a regex search over a large binary does not."""
    for literal in literals:
        pos = data.find(literal)
        while pos >= 0:
            start = max(pos + shift, 0)
            if pattern.match(data, start):
                return Finding(kind, _line(data, start))
            pos = data.find(literal, pos + 1)
    return None


def _line(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _scan_pem(data: bytes) -> Finding | None:
    start = data.find(b"-----BEGIN ")
    if start < 0:
        return None
    certificates: list[tuple[int, bytes]] = []
    for match in _PEM.finditer(data, start):
        label = match.group(1)
        if label.endswith(b"PRIVATE KEY"):
            return Finding("private key", _line(data, match.start()))
        if label in (b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"):
            der = _der(match.group(2))
            if any(oid in der for oid in _PROXY_OIDS) or _PROXY_CN.search(der):
                return Finding("proxy certificate", _line(data, match.start()))
            certificates.append((match.start(), der))
    # a lone end-entity certificate (a user's usercert.pem); a bundle of several certificates
    # without a key or a proxy is a public CA bundle (certifi's)
    if len(certificates) == 1 and not _BASIC_CONSTRAINTS_CA.search(certificates[0][1]):
        return Finding("certificate", _line(data, certificates[0][0]))
    return None


def _der(body: bytes) -> bytes:
    text = b"".join(line for line in body.split() if b":" not in line)
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return b""
