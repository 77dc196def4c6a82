"""The state directory's token keys: the demo keys, and the JWKS that publishes them."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from tokens import read_jwks, write_jwks

from gateway.keyset import PRIVATE_MEMBERS, public_jwk
from gateway.state import DEMO_KEYS, ensure_state


def _published(keys, alg: str) -> dict:
    """The JWK the demo key of ``alg`` should be published as."""
    private = load_pem_private_key(keys.demo_private_pems[alg], None)
    return public_jwk(private.public_key(), DEMO_KEYS[alg].kid, alg)


def test_first_start_publishes_both_demo_keys_public_halves_only(tmp_path):
    keys = ensure_state(tmp_path / "s")
    published = read_jwks(keys.jwks_path)
    assert published == [_published(keys, "RS256"), _published(keys, "ES256")]
    assert not any(PRIVATE_MEMBERS & set(k) for k in published)
    # nobody else may write it (that would be adding keys); it holds nothing secret
    assert stat.S_IMODE(keys.jwks_path.stat().st_mode) & 0o022 == 0
    for demo in DEMO_KEYS.values():  # the private halves are the owner's alone
        assert stat.S_IMODE((keys.jwks_path.parent / demo.filename).stat().st_mode) == 0o600


def test_a_second_start_changes_nothing(tmp_path):
    keys = ensure_state(tmp_path / "s")
    before = {p.name: p.read_bytes() for p in keys.jwks_path.parent.iterdir()}
    again = ensure_state(tmp_path / "s")
    assert {p.name: p.read_bytes() for p in keys.jwks_path.parent.iterdir()} == before
    assert again.demo_private_pems == keys.demo_private_pems


def test_a_state_directory_from_before_the_jwks_keeps_its_rsa_key(tmp_path):
    keys = ensure_state(tmp_path / "s")
    keys.jwks_path.unlink()
    (keys.jwks_path.parent / DEMO_KEYS["ES256"].filename).unlink()
    upgraded = ensure_state(tmp_path / "s")
    assert upgraded.token_private_pem == keys.token_private_pem  # old tokens stay good
    assert [k["kid"] for k in read_jwks(upgraded.jwks_path)] == ["demo", "demo-es256"]
    assert read_jwks(upgraded.jwks_path)[0] == _published(keys, "RS256")


def test_the_operators_edits_are_kept_and_a_removed_demo_key_stays_removed(tmp_path):
    keys = ensure_state(tmp_path / "s")
    theirs = public_jwk(load_pem_private_key(keys.token_private_pem, None).public_key(),
                        "their-issuer", "RS256")
    write_jwks(keys.jwks_path, [theirs])
    ensure_state(tmp_path / "s")
    assert read_jwks(keys.jwks_path) == [theirs]


def test_a_demo_key_made_again_replaces_its_old_entry(tmp_path):
    keys = ensure_state(tmp_path / "s")
    (keys.jwks_path.parent / DEMO_KEYS["ES256"].filename).unlink()
    remade = ensure_state(tmp_path / "s")
    assert remade.demo_private_pems["ES256"] != keys.demo_private_pems["ES256"]
    assert read_jwks(keys.jwks_path) == [_published(keys, "RS256"), _published(remade, "ES256")]


def test_an_odd_entry_in_the_operators_jwks_is_kept_not_a_crash(tmp_path):
    keys = ensure_state(tmp_path / "s")
    odd = {"kid": ["not", "a", "string"], "kty": "RSA"}
    write_jwks(keys.jwks_path, [odd])
    (keys.jwks_path.parent / DEMO_KEYS["ES256"].filename).unlink()
    remade = ensure_state(tmp_path / "s")
    assert read_jwks(keys.jwks_path) == [odd, _published(remade, "ES256")]


def test_a_broken_jwks_is_not_overwritten(tmp_path):
    keys = ensure_state(tmp_path / "s")
    (keys.jwks_path.parent / DEMO_KEYS["ES256"].filename).unlink()
    keys.jwks_path.write_text('{"keys": [')
    with pytest.raises(ValueError, match="jwks.json is not valid JSON"):
        ensure_state(tmp_path / "s")
    assert keys.jwks_path.read_text() == '{"keys": ['
    assert not (keys.jwks_path.parent / DEMO_KEYS["ES256"].filename).exists()
