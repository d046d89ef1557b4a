"""`poplar-edge profiles list|show|plan|validate`: the device profiles, for installers and profile authors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from common.cli import fail, print_json, table
from common.yamlconf import ConfigError
from edge import config as edge_config
from edge.cli.options import ConfigOpt, JsonOpt
from edge.profiles import ProfileLibrary, load_profile_file

app = typer.Typer(no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="profiles", help="List, explain and check device profiles (installers, authors).")


def library(config: str | None) -> ProfileLibrary:
    """The shipped profiles plus the site's folders when an edge config is at hand (none needed)."""
    path = edge_config.resolve_path(config)
    if not path.exists():
        if config:  # these commands need no config: say what is used instead of failing
            typer.echo(f"note: edge config {path} not found; using the shipped profiles only", err=True)
        return ProfileLibrary()
    try:
        return ProfileLibrary(edge_config.load(path).profiles_dirs)
    except ConfigError as exc:
        fail(f"cannot use the edge config:\n  {exc}", 2)


def _get(lib: ProfileLibrary, profile_id: str) -> Any:
    try:
        return lib.get(profile_id)
    except ConfigError as exc:
        fail(str(exc), 2)


def _modbus(lib: ProfileLibrary, profile_id: str):
    prof = _get(lib, profile_id)
    if getattr(prof, "kind", None) != "modbus":
        fail(f"profile {profile_id!r} is not a Modbus profile; this command needs one", 2)
    return prof


def _serial(prof) -> str:
    s = getattr(prof, "serial", None)
    return f"{s.baud} {s.data_bits}{s.parity}{s.stop_bits}" if s else ""


@app.command("list")
def list_(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List every profile: id, kind, vendor and model."""
    from edge.modbus.plan import plan_reads
    lib = library(config)
    rows, docs = [], []
    for pid, path in lib.paths().items():
        try:
            prof = lib.get(pid)
        except ConfigError as exc:
            docs.append({"id": pid, "file": str(path), "error": str(exc)})
            rows.append([pid, lib.kind(pid), "", "INVALID (profiles validate " + str(path) + ")", "", ""])
            continue
        kind = getattr(prof, "kind", lib.kind(pid))
        doc = {"id": pid, "kind": kind, "vendor": getattr(prof, "vendor", ""), "model": getattr(prof, "model", ""),
               "file": str(path)}
        reqs = ""
        if kind == "modbus":
            doc.update(phases=prof.phases, serial=_serial(prof), fields=len(prof.polled_registers()),
                       requests_per_poll=len(plan_reads(prof)))
            reqs = f"{doc['fields']} fields / {doc['requests_per_poll']} req"
        docs.append(doc)
        rows.append([pid, kind, doc["vendor"], doc["model"], doc.get("serial", ""), reqs])
    if json_out:
        print_json(docs)
        return
    typer.echo(table(rows, ["profile", "kind", "vendor", "model", "serial", "poll"]))


@app.command("show")
def show(profile_id: Annotated[str, typer.Argument(help="profile id, e.g. eastron-sdm120")],
         config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Explain a profile: settings, quirks and every register with its unit."""
    lib = library(config)
    prof = _get(lib, profile_id)
    if json_out:
        print_json(prof.model_dump(mode="json") if hasattr(prof, "model_dump") else {"id": profile_id})
        return
    if getattr(prof, "kind", None) != "modbus":
        typer.echo(f"{profile_id}: {getattr(prof, 'kind', '?')} profile from {lib.paths()[profile_id]}\n"
                   "see docs/profiles-mqtt.md, or use --json for every setting")
        return
    quirks = prof.limits.describe()
    typer.echo(f"{prof.id}: {prof.vendor} {prof.model} ({prof.phases}-phase) from {lib.paths()[profile_id]}")
    if prof.description:
        typer.echo(f"  {prof.description}")
    typer.echo(f"  serial defaults: {_serial(prof) or 'none (Modbus TCP device)'}; unit id {prof.defaults.unit_id}; "
               f"poll every {prof.defaults.interval_s:g} s; measurement {prof.measurement}")
    typer.echo(f"  quirks: {', '.join(quirks)}")
    typer.echo("  sources:\n" + "\n".join(f"    - {s}" for s in prof.sources))
    rows = []
    for r in prof.registers:
        conv = []
        if r.scale != 1:
            conv.append(f"x{r.scale:g}")
        if r.offset:
            conv.append(f"{r.offset:+g}")
        order = "" if (r.byte_order, r.word_order) == ("big", "big") else f"{r.byte_order[0]}{r.word_order[0]}"
        rows.append([r.field, r.function, f"0x{r.address:04X}", r.type + (f"[{r.count}]" if r.type == "string" else ""),
                     order, " ".join(conv), r.unit, "yes" if r.poll else "no", r.description])
    typer.echo(table(rows, ["field", "fc", "address", "type", "order", "scale", "unit", "polled", "description"]))


@app.command("plan")
def plan(profile_id: Annotated[str, typer.Argument(help="profile id, e.g. eastron-sdm630")],
         max_gap: Annotated[Optional[int], typer.Option(help="override the profile's largest gap read through")] = None,
         config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Print the requests one poll of this profile makes."""
    from edge.modbus.plan import describe_plan, plan_reads
    lib = library(config)
    prof = _modbus(lib, profile_id)
    if max_gap is not None and not 0 <= max_gap <= 125:
        fail(f"--max-gap {max_gap}: use 0 to 125 registers", 2)
    reqs = plan_reads(prof, max_gap)
    if json_out:
        print_json([{"function": r.function, "address": r.address, "count": r.count,
                     "fields": [s.field for s in r.registers]} for r in reqs])
        return
    typer.echo(describe_plan(prof, reqs))


@app.command("validate")
def validate(file: Annotated[Path, typer.Argument(help="profile YAML file to check")], json_out: JsonOpt = False) -> None:
    """Check one profile file; errors name the file, line and field."""
    try:
        prof = load_profile_file(file)
    except ConfigError as exc:
        if json_out:
            print_json({"file": str(file), "ok": False, "errors": getattr(exc, "problems", None) or [str(exc)]})
            raise typer.Exit(1)
        fail(f"{file} is not a valid profile:\n  " + str(exc).replace("\n", "\n  "), 1)
    summary = f"{file}: ok ({getattr(prof, 'kind', '?')} profile {getattr(prof, 'id', '')})"
    doc: dict = {"file": str(file), "ok": True, "id": getattr(prof, "id", None), "kind": getattr(prof, "kind", None)}
    if getattr(prof, "kind", None) == "modbus":
        from edge.modbus.plan import plan_reads
        reqs = plan_reads(prof)
        doc.update(fields=len(prof.polled_registers()), requests_per_poll=len(reqs))
        summary += f": {doc['fields']} polled fields in {len(reqs)} request(s) per poll"
    if json_out:
        print_json(doc)
        return
    typer.echo(summary)
