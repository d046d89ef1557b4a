"""`poplar-collector`: the central collector's command line (central IT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from common.broker_config import tls_section
from common.cli import fail, load_config_or_fail, print_json, run_until_signal, table
from common.logs import setup_logging
from common.mqtt import MqttUrl
from collector import config as cconfig
from collector.gateways import GatewayError, Gateways

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Poplar (白杨) collector: uplink batches from gateways into InfluxDB.")
gateways_app = typer.Typer(no_args_is_help=True)
app.add_typer(gateways_app, name="gateways", help="The gateways allowed to write, and their sites.")

ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", "-c", envvar=cconfig.ENV_VAR, show_envvar=True,
    help=f"collector config file (default {cconfig.DEFAULT_PATH})")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document")]


def load_config(path: str | None) -> cconfig.CollectorConfig:
    return load_config_or_fail(
        cconfig.load, cconfig.resolve_path(path),
        "create one with: poplar-collector init --config PATH --broker mqtt://HOST:PORT "
        "--influx-url http://HOST:8086 --database NAME")


@app.command("init")
def init(
    config: ConfigOpt = None,
    broker: Annotated[str, typer.Option(help="central broker, mqtt://HOST:PORT or mqtts://HOST:PORT")] = ...,
    influx_url: Annotated[str, typer.Option(help="InfluxDB base URL, http://HOST:8086")] = ...,
    sink: Annotated[str, typer.Option(help="influxdb1 (HTTP /write) or influxdb2 (/api/v2/write)")] = "influxdb1",
    database: Annotated[Optional[str], typer.Option(help="InfluxDB 1.x database")] = None,
    org: Annotated[Optional[str], typer.Option(help="InfluxDB 2.x organisation")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="InfluxDB 2.x bucket")] = None,
    token: Annotated[Optional[str], typer.Option(help="InfluxDB 2.x token")] = None,
    state_dir: Annotated[Optional[str], typer.Option(help="folder for the gateway registry (default: beside the config)")] = None,
    username: Annotated[Optional[str], typer.Option(help="broker user")] = None,
    password: Annotated[Optional[str], typer.Option(help="broker password")] = None,
    ca_file: Annotated[Optional[str], typer.Option(
        help="PEM file of the CA that signed the broker's certificate, for mqtts:// (default: the system's CAs)")] = None,
    cert_file: Annotated[Optional[str], typer.Option(help="the collector's client certificate (PEM)")] = None,
    key_file: Annotated[Optional[str], typer.Option(help="its private key (PEM)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing config")] = False,
) -> None:
    """Write a working collector config."""
    path = cconfig.resolve_path(config)
    try:
        MqttUrl.parse(broker)
    except ValueError as exc:
        fail(f"--broker {broker!r}: {exc}", 2)
    if not influx_url.startswith(("http://", "https://")):
        fail(f"--influx-url {influx_url!r}: expected http://HOST:PORT", 2)
    if sink == "influxdb1":
        if not database:
            fail("--sink influxdb1 needs --database NAME", 2)
        sink_doc = {"type": "influxdb1", "url": influx_url, "database": database}
    elif sink == "influxdb2":
        missing = [o for o, v in (("--org", org), ("--bucket", bucket), ("--token", token)) if not v]
        if missing:
            fail(f"--sink influxdb2 needs {', '.join(missing)}", 2)
        sink_doc = {"type": "influxdb2", "url": influx_url, "org": org, "bucket": bucket, "token": token}
    else:
        fail(f"--sink {sink!r}: use influxdb1 or influxdb2", 2)
    try:
        tls = tls_section(ca_file, cert_file, key_file, "--")
    except ValueError as exc:
        fail(str(exc), 2)
    if path.exists() and not force:
        fail(f"{path} already exists; use --force to overwrite it")
    doc = {"broker": {"url": broker}, "sink": sink_doc,
           "state_dir": str(Path(state_dir).resolve()) if state_dir else str(path.resolve().parent / "collector-state")}
    if username:
        doc["broker"].update(username=username, password=password or "")
    if tls:
        doc["broker"]["tls"] = tls
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Poplar collector config, written by poplar-collector init. "
                    "Every setting: configs/collector.example.yaml\n"
                    + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    cfg = cconfig.load(path)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    typer.echo(f"wrote {path}\nnext: poplar-collector gateways add GATEWAY --site SITE, then poplar-collector run")


@gateways_app.command("add")
def gateways_add(gateway: str, site: Annotated[str, typer.Option(help="the site this gateway belongs to")] = ...,
                 note: Annotated[str, typer.Option(help="free text, e.g. where the box is")] = "",
                 config: ConfigOpt = None) -> None:
    """Allow a gateway to write, for one site."""
    cfg = load_config(config)
    g = Gateways(cfg.gateways_db)
    try:
        g.add(gateway, site, note)
    except GatewayError as exc:
        fail(str(exc))
    typer.echo(f"gateway {gateway} may now write for site {site}")


@gateways_app.command("remove")
def gateways_remove(gateway: str, config: ConfigOpt = None) -> None:
    """Stop accepting a gateway's batches."""
    cfg = load_config(config)
    try:
        Gateways(cfg.gateways_db).remove(gateway)
    except GatewayError as exc:
        fail(str(exc))
    typer.echo(f"gateway {gateway} removed")


@gateways_app.command("list")
def gateways_list(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """The gateways allowed to write."""
    cfg = load_config(config)
    rows = Gateways(cfg.gateways_db).all()
    if json_out:
        print_json(rows)
    elif not rows:
        typer.echo("no gateways authorised yet: poplar-collector gateways add GATEWAY --site SITE")
    else:
        typer.echo(table([[r["gateway"], r["site"], r["note"]] for r in rows], ["gateway", "site", "note"]))


@app.command("run")
def run(config: ConfigOpt = None) -> None:
    """Run the collector in the foreground until SIGTERM or Ctrl-C."""
    cfg = load_config(config)
    setup_logging(cfg.log_level)
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    from collector.service import Collector, tune_gc

    tune_gc()
    run_until_signal(lambda stop: Collector(cfg).run(stop))


# The other command groups live in their own modules (imported last: they use this module's options).
from collector.cli import db_cmds, report_cmds, status_cmds  # noqa: E402

for _group in (db_cmds, report_cmds, status_cmds):
    _group.register(app)


def main() -> None:
    app()
