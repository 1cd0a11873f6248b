"""A local OIDC-style identity provider for tests: RSA/EC signing keys and their JWKS
served over real HTTP on a free loopback port."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import UNIT

ISSUER = "https://idp.example.test/realms/ris"
AUDIENCE = "ris-gateway"


class SigningKey:
    """A provider's key pair: its public JWK and tokens signed with its private half."""

    def __init__(self, kind: str) -> None:
        self.kid = f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "rsa":
            self.alg = "RS256"
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.alg = "ES256"
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, *, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "sub": "idp-ana",
            "name": "Dr. Ana Provider",
            "roles": ["radiologist"],
            "tenant": "northwind",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": kid or self.kid})


class JwksServer:
    """A real HTTP server on a free loopback port serving a JWKS the test can change."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": list(outer.keys)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self._up = True

    def publish(self, *keys: SigningKey) -> None:
        self.keys = [k.jwk for k in keys]

    def stop(self) -> None:
        """The provider goes away: its port refuses connections."""
        if self._up:
            self._up = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5 * UNIT)
