"""Secrets at rest: keys and tokens as digests, passwords as salted scrypt hashes."""

from __future__ import annotations

from imagesvc.shared.keys import check_password, hash_password, key_digest, new_api_key


def test_a_password_hash_is_salted_and_checks_only_its_password():
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second and "s3cret" not in first
    assert first.startswith("scrypt$16384$8$1$")
    assert check_password("s3cret", first) and check_password("s3cret", second)
    assert not check_password("s3creT", first)


def test_no_or_unreadable_hashes_never_match():
    for stored in (None, "", "plain", "md5$x", "scrypt$a$b$c$d$e", "scrypt$16384$8$1$!!!$!!!"):
        assert check_password("anything", stored) is False


def test_keys_are_random_and_stored_as_digests():
    key = new_api_key()
    assert len(key) >= 40 and key != new_api_key()
    assert key_digest(key) == key_digest(key) and len(key_digest(key)) == 64 and key not in key_digest(key)
