"""Real keys for the auth tests, and the JWKS edited as an operator edits it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_jwks(path: Path, keys: list[dict[str, Any]]) -> None:
    """Replace the JWKS as operators are told to: write a new file, then rename it over."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps({"keys": keys}, indent=2))
    os.replace(tmp, path)


def read_jwks(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["keys"]
