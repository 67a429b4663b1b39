"""The guard parses each client certificate once (``read_client_certificate``). The cache must
be invisible: for any bytes, the cached answer is what parsing them afresh says, a refusal is
a refusal every time, and no certificate is answered with another's identity or fingerprint."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.controlplane.guard import read_client_certificate
from custos.controlplane.pki import CertificateAuthority, identity_from_pem
from custos.core.hosts import cert_fingerprint
from custos.errors import InvalidInput

CA = CertificateAuthority.create()
CERTS = [CA.issue(common_name=cn, role=role)[0]
         for cn, role in (("alice", "security-team"), ("alice", "auditor"), ("bob", "security-team"),
                          ("gpu-1", "agent"))]
# The same subject twice: two certificates, two fingerprints.
CERTS.append(CA.issue(common_name="bob", role="security-team")[0])
NOT_CERTS = [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
             CERTS[0][:-40], CERTS[0].replace(b"M", b"N", 1), b"\x00" * 600]


def fresh(pem: bytes) -> object:
    try:
        return identity_from_pem(pem), cert_fingerprint(pem)
    except InvalidInput as exc:
        return ("refused", type(exc))


def cached(pem: bytes) -> object:
    try:
        return read_client_certificate(pem)
    except InvalidInput as exc:
        return ("refused", type(exc))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CERTS + NOT_CERTS) | st.binary(max_size=64), max_size=30))
def test_the_cached_parse_is_the_fresh_parse_in_any_order(pems: list[bytes]) -> None:
    for pem in pems:
        assert cached(pem) == fresh(pem)


def test_each_certificate_is_its_own_entry() -> None:
    answers = {pem: read_client_certificate(pem) for pem in CERTS}
    assert len({fp for _, fp in answers.values()}) == len(CERTS)
    assert answers[CERTS[0]][0].role == "security-team" and answers[CERTS[1]][0].role == "auditor"
    before = read_client_certificate.cache_info().hits
    for pem in CERTS:
        assert read_client_certificate(pem) == answers[pem]
    assert read_client_certificate.cache_info().hits == before + len(CERTS)


@pytest.mark.parametrize("pem", NOT_CERTS)
def test_a_refusal_is_never_remembered_as_an_identity(pem: bytes) -> None:
    for _ in range(3):
        with pytest.raises(InvalidInput):
            read_client_certificate(pem)
