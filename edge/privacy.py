"""Privacy by default for face-gate data (see docs/privacy.md).

Person ids (employee numbers, card numbers, user ids) are location tracks of a person (PIPL
Art. 28), so they leave the box only as a keyed pseudonym, or not at all. The key is a per-site
secret that never leaves the box: the district platform can count "the same person" inside one
compound but cannot recover the id, nor link a person across compounds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Literal

PersonIdMode = Literal["pseudonymize", "drop"]

#: Hex characters of the HMAC kept: 64 bits, ample against collisions in one compound.
PSEUDONYM_HEX = 16
SECRET_BYTES = 32
_MIN_SECRET = 16

#: Payload keys that carry names, ids, pictures or biometrics in the dialects we know.
#: Profiles may not map these to fields or tags except through `privacy.person`; the profile
#: loader checks it, so a careless YAML edit cannot leak them. Compared case-insensitively.
PERSONAL_KEYS: frozenset[str] = frozenset(k.lower() for k in (
    # names and identity documents
    "name", "username", "userName", "personName", "IdentityCard", "idCard", "idNo", "phone",
    "Department", "Job", "roomNumber", "householdId",
    # person ids
    "employeeNo", "employeeNoString", "cardNo", "CardNum", "UserID", "userid", "uid", "user_id",
    "person_id", "Password", "QRCode", "QRCodeInfo", "QRCodeInfoBase64",
    # pictures and biometrics
    "pictureURL", "visibleLightURL", "thermalURL", "SnapURL", "Photo", "pic", "picture",
    "snapshot", "image", "data", "fa", "fp", "feature", "faceFeature",
))


class SecretFileError(Exception):
    """The site secret file cannot be used; str() tells the installer what to do."""


def is_personal_key(key: str) -> bool:
    return key.lower() in PERSONAL_KEYS


class Privacy:
    """Turns person ids into pseudonyms, or drops them, per site configuration."""

    def __init__(self, secret: bytes, person_ids: PersonIdMode = "pseudonymize") -> None:
        if person_ids not in ("pseudonymize", "drop"):
            raise ValueError(f"person_ids must be 'pseudonymize' or 'drop', got {person_ids!r}")
        if person_ids == "pseudonymize" and len(secret) < _MIN_SECRET:
            raise ValueError(f"the site secret must be at least {_MIN_SECRET} bytes")
        self._secret = bytes(secret)
        self.person_ids: PersonIdMode = person_ids
        # The keyed state, made once and copied per id (HMAC-SHA256 all the same: pseudonyms must
        # not change across versions, or a site's history splits in two).
        self._keyed = hmac.new(self._secret, digestmod=hashlib.sha256)

    def pseudonym(self, value: str) -> str | None:
        """Keyed pseudonym of a person id; None when ids are dropped or the value is empty."""
        if self.person_ids == "drop":
            return None
        text = str(value).strip()
        if not text:
            return None
        mac = self._keyed.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()[:PSEUDONYM_HEX]

    def __repr__(self) -> str:  # never print the secret
        return f"Privacy(person_ids={self.person_ids!r})"


def load_or_create_secret(path: str | Path) -> bytes:
    """Read the site secret at PATH, creating a random 32-byte one (mode 0600) if missing.

    Stored as hex text so it can be backed up and restored by hand: losing it changes every
    pseudonym of the site. A file readable by group or others is refused, not silently fixed,
    because the secret may already have been read.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(SECRET_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_secret(path)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        return secret
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{path}: the site secret is readable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`, and if others may have read it, delete it so a new one is "
            "made (pseudonyms of this site then change)")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise SecretFileError(f"{path}: expected the site secret as hex text") from None
    if len(secret) < _MIN_SECRET:
        raise SecretFileError(f"{path}: the site secret is shorter than {_MIN_SECRET} bytes")
    return secret
