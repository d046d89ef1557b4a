"""The MQTT broker section of a config file (edge and collector), validated once, on load.

One definition for both sides: the URL, the login and the TLS files. The TLS files are checked
when the config is loaded, so an installer hears "uplink.tls.ca_file: /etc/poplar/ca.pem does not
exist" from any command instead of a connection that silently never comes up.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator

from common.mqtt import MqttUrl, TlsFiles
from common.yamlconf import StrictModel as _Strict


def _existing_file(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{path} does not exist (copy the file there or correct the path)")
    if not p.is_file():
        raise ValueError(f"{path} is not a file")
    return path


class TlsConfig(_Strict):
    ca_file: str | None = Field(None, description=(
        "PEM file of the CA that signed the broker's certificate; default: the system's CAs"))
    cert_file: str | None = Field(None, description="this client's certificate (PEM), for brokers that require one")
    key_file: str | None = Field(None, description="the private key of cert_file (PEM, owner-only permissions)")
    insecure: bool = Field(False, description="skip certificate checks (testing only)")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        return v if v is None else _existing_file(v)

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        if v is not None and os.access(v, os.R_OK):
            try:
                ssl.create_default_context(cafile=v)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"{v} holds no usable CA certificate in PEM form ({_ssl_reason(exc)}); "
                                 "ask central IT for the CA file (-----BEGIN CERTIFICATE-----)") from None
        return v

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = ("cert_file", "key_file") if self.cert_file else ("key_file", "cert_file")
            raise ValueError(f"{given} is set but {missing} is not: a client certificate needs both")
        if self.cert_file and self.key_file and os.access(self.cert_file, os.R_OK) \
                and os.access(self.key_file, os.R_OK):  # unreadable here (another user): checked at connect
            try:
                ssl.create_default_context().load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(f"cert_file {self.cert_file} and key_file {self.key_file} do not make a "
                                 f"certificate and its key ({_ssl_reason(exc)})") from None
        return self

    def files(self) -> TlsFiles:
        return TlsFiles(self.ca_file, self.cert_file, self.key_file, self.insecure)


def _ssl_reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


class BrokerConfig(_Strict):
    """URL, login and TLS of one MQTT broker; the edge and the collector add their own settings."""

    url: str = Field(description="mqtt://HOST:PORT or mqtts://HOST:PORT")
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = Field(None, description="TLS files; mqtts:// without them uses the system's CAs")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        MqttUrl.parse(v)  # raises ValueError with a plain message
        return v

    def parsed(self) -> MqttUrl:
        return MqttUrl.parse(self.url)

    def tls_files(self) -> TlsFiles | None:
        return self.tls.files() if self.tls else None


def tls_section(ca_file: str | None, cert_file: str | None, key_file: str | None, option_prefix: str) -> dict | None:
    """The `tls:` section `init` writes from its --*-ca-file/--*-cert-file/--*-key-file options, checked
    like a loaded config; ValueError names the option (`option_prefix` + "ca-file", ...)."""
    doc = {k: str(Path(v).resolve()) for k, v in (("ca_file", ca_file), ("cert_file", cert_file),
                                                   ("key_file", key_file)) if v}
    if not doc:
        return None
    try:
        TlsConfig(**doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["loc"]:
            msg = f"{option_prefix}{str(err['loc'][0]).replace('_', '-')}: {msg}"
        else:  # about two fields: name them as options
            for f in ("ca_file", "cert_file", "key_file"):
                msg = msg.replace(f, option_prefix + f.replace("_", "-"))
        raise ValueError(msg) from None
    return doc
