"""Server side of the MTProto auth-key exchange (req_pq_multi, req_DH_params, set_client_DH_params).

The server's RSA key is generated once per state directory and kept there (``server_key.pem``,
private) with its public half next to it (``server_public.pem``) for clients to pass to
``telethon.crypto.rsa.add_key``. Invariant: an auth key is only returned after the client proved
it knows ``new_nonce`` (sent RSA-encrypted to our key) and completed Diffie-Hellman with
Telegram's 2048-bit ``dh_prime`` and ``g = 3``; any step out of order or with a wrong nonce
raises `HandshakeError`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import rsa
from telethon.crypto import AES, AuthKey
from telethon.crypto import rsa as telethon_rsa
from telethon.extensions import BinaryReader
from telethon.helpers import generate_key_data_from_nonce
from telethon.tl.functions import (
    ReqDHParamsRequest,
    ReqPqMultiRequest,
    ReqPqRequest,
    SetClientDHParamsRequest,
)
from telethon.tl.tlobject import TLObject
from telethon.tl.types import (
    ClientDHInnerData,
    DhGenOk,
    PQInnerData,
    PQInnerDataDc,
    PQInnerDataTempDc,
    ResPQ,
    ServerDHInnerData,
    ServerDHParamsOk,
)

DH_PRIME = int(
    "C71CAEB9C6B1C9048E6C522F70F13F73980D40238E3E21C14934D037563D930F48198A0AA7C14058229493D225"
    "30F4DBFA336F6E0AC925139543AED44CCE7C3720FD51F69458705AC68CD4FE6B6B13ABDC9746512969328454F1"
    "8FAF8C595F642477FE96BB2A941D5BCD1D4AC8CC49880708FA9B378E3C4F3A9060BEE67CF9A4A4A695811051907"
    "E162753B56B0F6B410DBA74D8A84B2A14B3144E0EF1284754FD17ED950D5965B4B9DD46582DB1178D169C6BC465"
    "B0D6FF9CA3928FEF5B9AE4E418FC15E83EBEA0F87FA9FF5EED70050DED2849F47BF959D956850CE929851F0D811"
    "5F635B105EE2E4E15D04B2454BF6F4FADF034B10403119CD8E3B92FCC5B",
    16,
)
DH_G = 3
# Telegram's documented example pq: Telethon's Pollard-rho factorises it in well under 0.1 s.
PQ_P, PQ_Q = 1229739323, 1402015859
SAFETY_RANGE = 2 ** (2048 - 64)
PRIVATE_KEY_FILE = "server_key.pem"
PUBLIC_KEY_FILE = "server_public.pem"


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()  # noqa: S324 - MTProto's handshake is defined with SHA1


class HandshakeError(Exception):
    """The client broke the auth-key exchange; the connection gets a transport error."""


@dataclass(frozen=True)
class ServerKey:
    """The server's RSA key pair and the fingerprint clients look it up by."""

    private: rsa.PrivateKey
    public_pem: bytes

    @property
    def fingerprint(self) -> int:
        return int(telethon_rsa._compute_fingerprint(self.private))

    @classmethod
    def load_or_create(cls, state_dir: Path) -> ServerKey:
        private_path = state_dir / PRIVATE_KEY_FILE
        if private_path.exists():
            private = rsa.PrivateKey.load_pkcs1(private_path.read_bytes())
        else:
            _, private = rsa.newkeys(2048)
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = private_path.with_suffix(".tmp")
            tmp.write_bytes(private.save_pkcs1())
            tmp.chmod(0o600)
            tmp.replace(private_path)
        public_pem = rsa.PublicKey(private.n, private.e).save_pkcs1()
        public_path = state_dir / PUBLIC_KEY_FILE
        if not public_path.exists() or public_path.read_bytes() != public_pem:
            public_path.write_bytes(public_pem)
        public_path.chmod(0o644)  # clients on the machine read it to trust the server
        return cls(private, public_pem)


@dataclass(frozen=True)
class NewAuthKey:
    """The outcome of a completed exchange: the key and the first server salt."""

    key: bytes
    salt: int


def _int_bytes(value: int) -> bytes:
    return bytes(telethon_rsa.get_byte_array(value))


def _read_hashed(plain: bytes) -> TLObject:
    """Parse ``sha1(data) + data + padding`` and check the hash against the re-serialised object."""
    with BinaryReader(plain[20:]) as reader:
        obj = reader.tgread_object()
    if sha1(bytes(obj)) != plain[:20]:
        raise HandshakeError("hash of the encrypted data does not match")
    return obj


class Handshake:
    """One connection's progress through the exchange; `handle` answers each plain request."""

    def __init__(self, server_key: ServerKey) -> None:
        self._key = server_key
        self._nonce: int | None = None
        self._server_nonce = 0
        self._new_nonce = 0
        self._a = 0
        self._tmp_key = b""
        self._tmp_iv = b""

    def handle(self, request: TLObject) -> tuple[TLObject, NewAuthKey | None]:
        if isinstance(request, (ReqPqMultiRequest, ReqPqRequest)):
            return self._res_pq(request.nonce), None
        if isinstance(request, ReqDHParamsRequest):
            return self._server_dh_params(request), None
        if isinstance(request, SetClientDHParamsRequest):
            return self._dh_gen(request)
        raise HandshakeError(f"unexpected plain message {type(request).__name__}")

    def _check_nonces(self, nonce: int, server_nonce: int) -> None:
        if self._nonce is None or nonce != self._nonce or server_nonce != self._server_nonce:
            raise HandshakeError("nonce or server_nonce does not match this exchange")

    def _res_pq(self, nonce: int) -> ResPQ:
        self._nonce = nonce
        self._server_nonce = int.from_bytes(os.urandom(16), "little", signed=True)
        self._new_nonce = 0
        return ResPQ(
            nonce=nonce,
            server_nonce=self._server_nonce,
            pq=_int_bytes(PQ_P * PQ_Q),
            server_public_key_fingerprints=[self._key.fingerprint],
        )

    def _server_dh_params(self, request: ReqDHParamsRequest) -> ServerDHParamsOk:
        self._check_nonces(request.nonce, request.server_nonce)
        if request.public_key_fingerprint != self._key.fingerprint:
            raise HandshakeError("unknown RSA key fingerprint")
        if {int.from_bytes(request.p, "big"), int.from_bytes(request.q, "big")} != {PQ_P, PQ_Q}:
            raise HandshakeError("wrong factorisation of pq")
        private = self._key.private
        plain_int = pow(int.from_bytes(request.encrypted_data, "big"), private.d, private.n)
        inner = _read_hashed(plain_int.to_bytes(256, "big")[1:])
        if not isinstance(inner, (PQInnerData, PQInnerDataDc, PQInnerDataTempDc)):
            raise HandshakeError(f"unexpected inner data {type(inner).__name__}")
        self._check_nonces(inner.nonce, inner.server_nonce)
        self._new_nonce = inner.new_nonce
        self._a = int.from_bytes(os.urandom(256), "big")
        g_a = pow(DH_G, self._a, DH_PRIME)
        answer = bytes(
            ServerDHInnerData(
                nonce=self._nonce,
                server_nonce=self._server_nonce,
                g=DH_G,
                dh_prime=_int_bytes(DH_PRIME),
                g_a=_int_bytes(g_a),
                server_time=int(time.time()),
            )
        )
        self._tmp_key, self._tmp_iv = generate_key_data_from_nonce(
            self._server_nonce, self._new_nonce
        )
        encrypted = AES.encrypt_ige(sha1(answer) + answer, self._tmp_key, self._tmp_iv)
        return ServerDHParamsOk(self._nonce, self._server_nonce, encrypted)

    def _dh_gen(self, request: SetClientDHParamsRequest) -> tuple[TLObject, NewAuthKey]:
        self._check_nonces(request.nonce, request.server_nonce)
        if not self._new_nonce or len(request.encrypted_data) % 16:
            raise HandshakeError("set_client_DH_params before req_DH_params")
        plain = AES.decrypt_ige(request.encrypted_data, self._tmp_key, self._tmp_iv)
        inner = _read_hashed(plain)
        if not isinstance(inner, ClientDHInnerData):
            raise HandshakeError(f"unexpected inner data {type(inner).__name__}")
        g_b = int.from_bytes(inner.g_b, "big")
        if not SAFETY_RANGE <= g_b <= DH_PRIME - SAFETY_RANGE:
            raise HandshakeError("g_b outside the safe range")
        # Telethon keeps the shared secret in its minimal big-endian length; so do we, or the
        # key would differ from the client's whenever it starts with a zero byte.
        key = AuthKey(_int_bytes(pow(g_b, self._a, DH_PRIME)))
        new_nonce_head = self._new_nonce.to_bytes(32, "little", signed=True)[:8]
        server_nonce_head = self._server_nonce.to_bytes(16, "little", signed=True)[:8]
        mixed = bytes(x ^ y for x, y in zip(new_nonce_head, server_nonce_head, strict=True))
        (salt,) = struct.unpack("<q", mixed)
        answer = DhGenOk(
            nonce=self._nonce,
            server_nonce=self._server_nonce,
            new_nonce_hash1=key.calc_new_nonce_hash(self._new_nonce, 1),
        )
        self._nonce = None
        self._new_nonce = 0
        return answer, NewAuthKey(key=key.key, salt=salt)
