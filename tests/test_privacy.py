import hashlib
import hmac
import logging
import os
import stat

import pytest

from edge.privacy import PSEUDONYM_HEX, Privacy, SecretFileError, is_personal_key, load_or_create_secret


def test_pseudonym_is_keyed_stable_and_truncated():
    a, b = Privacy(b"a" * 32), Privacy(b"b" * 32)
    p = a.pseudonym("1203")
    assert p == a.pseudonym("1203") == a.pseudonym(" 1203 ")
    assert len(p) == PSEUDONYM_HEX and int(p, 16) >= 0
    assert p != b.pseudonym("1203")  # another site cannot link the person
    assert p != a.pseudonym("1204")
    assert "1203" not in p


def test_pseudonym_is_hmac_sha256_so_it_never_changes_across_versions():
    # A site's history must not split when the agent is upgraded: the algorithm is fixed.
    assert Privacy(b"k" * 32).pseudonym("张三-0042") == \
        hmac.new(b"k" * 32, "张三-0042".encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def test_drop_mode_and_empty_values():
    assert Privacy(b"a" * 32, "drop").pseudonym("1203") is None
    assert Privacy(b"a" * 32).pseudonym("") is None
    assert Privacy(b"", "drop").pseudonym("x") is None  # no secret needed to drop


def test_rejects_bad_config():
    with pytest.raises(ValueError):
        Privacy(b"short")
    with pytest.raises(ValueError):
        Privacy(b"a" * 32, "hash")  # type: ignore[arg-type]
    assert "aaaa" not in repr(Privacy(b"a" * 32))


def test_secret_created_0600_and_reused(tmp_path):
    path = tmp_path / "sub" / "site.secret"
    s1 = load_or_create_secret(path)
    assert len(s1) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == s1


def test_secret_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "site.secret"
    load_or_create_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_or_create_secret(path)


def test_secret_garbage_or_short_is_refused(tmp_path):
    path = tmp_path / "s"
    path.write_text("not hex")
    os.chmod(path, 0o600)
    with pytest.raises(SecretFileError, match="hex"):
        load_or_create_secret(path)
    path.write_text("abcd")
    with pytest.raises(SecretFileError, match="shorter"):
        load_or_create_secret(path)


def test_personal_keys():
    for k in ("name", "employeeNoString", "CardNo", "pictureURL", "SnapURL", "Photo", "UserID"):
        assert is_personal_key(k)
    assert not is_personal_key("subEventType")


def test_the_mqtt_source_pseudonymises_with_the_site_secret_or_drops(tmp_path, caplog):
    """The source applies the site's privacy config; a leaky secret file never leaks ids."""
    from edge.config import BrokerConfig, EdgeConfig, PrivacyConfig, UplinkConfig
    from edge.mqtt.source import _make_privacy

    def cfg(**privacy):
        return EdgeConfig(site="s", gateway="g", state_dir=str(tmp_path / "st"),
                          local_broker=BrokerConfig(url="mqtt://127.0.0.1:1"),
                          uplink=UplinkConfig(url="mqtt://127.0.0.1:1"), privacy=PrivacyConfig(**privacy))

    c = cfg()
    p = _make_privacy(c)
    secret = bytes.fromhex(c.secret_file.read_text().strip())
    assert p.pseudonym("12345") == Privacy(secret).pseudonym("12345") != "12345"
    assert oct(c.secret_file.stat().st_mode & 0o777) == "0o600"
    assert _make_privacy(cfg(person_ids="drop")).pseudonym("12345") is None
    os.chmod(c.secret_file, 0o644)
    with caplog.at_level(logging.ERROR):
        leaky = _make_privacy(c)
    assert leaky.pseudonym("12345") is None
    assert "chmod 600" in caplog.text and "dropped" in caplog.text
