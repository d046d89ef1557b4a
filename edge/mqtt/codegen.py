"""Code generation for the MQTT mapper: one Python function for the messages of a profile that
share a topic pattern, which tests the signature, recognises the message and maps it.

Why it exists: interpreting a compiled profile field by field (a call per value read, per enum
look-up, per condition) cost 40-65 us per gate event, more than the whole per-message budget of
the 20k events/s ingest (issue #4). A generated function reads each distinct payload path once
into a local variable (a shared prefix once), joins a multi-ref key once, looks enum tables up
by the key's canonical form computed once (an int by itself), tests conditions and device
options inline and stores the common value types directly. Anything off that path (a value
that needs coercion, a missing required field, a time not in the cache) calls back into the
general rules of edge/mqtt/mapper.py, passed in as a `Runtime`, so each rule is written once and
the generated code only decides when it may skip one. tests/test_mqtt_mapper_equivalence.py
holds it to the interpreter it replaced.

Profile text never becomes code: the generated source holds only names made up here (v3, k2,
_k17...), `repr()` of exact str and int values, and names bound in the function's namespace
(enum tables, defaults and every other profile value are bound there as constants). The
namespace has a handful of builtins and nothing else. Payloads are data to the functions.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edge.mqtt.profile import Cond, FieldMap, MessageSpec, MqttProfile, PointSpec, canon

_PATH = re.compile(r"[^.\[\]]+|\[\d+\]")
_LEAF = object()  # trie key of the variable a path is read into
_BUILTINS = {"type": type, "str": str, "int": int, "bool": bool, "dict": dict, "list": list, "len": len,
             "float": float}
_SERIAL = itertools.count()  # names the code objects, for tracebacks


@lru_cache(maxsize=4096)
def path_parts(path: str) -> tuple[str | int, ...]:
    """'a.b[0].c' -> ('a', 'b', 0, 'c'), parsed once per profile path."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in _PATH.findall(path))


@dataclass(frozen=True)
class Runtime:
    """What generated code may call: the mapper's general rules and types."""

    missing: object  # the "no such path" sentinel
    field: Callable[[FieldMap], Any]  # FieldMap -> the compiled field the general rules take
    value: Callable  # (cfield, raw, warnings) -> value | None; the whole rule of a field
    put: Callable  # (fields, refused, name, value): store a field value or refuse it
    put_tag: Callable  # (tags, name, value)
    tag_value: Callable[[object], str | None]  # what a value becomes as a tag (None: no tag)
    keep: Callable  # common.points.keep_field
    join: Callable  # (raw values,) -> joined key | missing
    key_of: Callable  # raw -> canonical form, or None when absent or not a scalar
    canon_str: Callable[[str], str]  # canon() of a str, memoised
    timestamp: Callable  # (cmessage, raws, lo, hi, now_ns, extra, warnings) -> ns
    device_id: Callable  # (ref, raw) -> device id, or MapError
    device_ids: dict  # raw str -> device id, for ids already checked
    person: Callable  # (absent, raws, privacy) -> pseudonym | None
    snapshot: Callable  # (raw, warnings) -> bytes | None
    items: Callable  # (explode spec, raw) -> list of items
    point: type
    mapped: type
    map_error: type
    min_time_ns: int
    max_ahead_ns: int
    big: float  # floats at least this large may be integers orjson rounded
    priority_of: Callable[[str], Any]
    #: For functions reading an orjson document: rules by their names in generated code, in
    #: versions that raise for a float as large as `big` (see mapper._Inexact).
    checked: dict[str, Callable]


def _int_form(key: str) -> int | None:
    """The int whose text is exactly the canonical KEY ("75" -> 75; "075", "+7", "\u0664" none)."""
    try:
        n = int(key)
    except ValueError:
        return None
    return n if str(n) == key else None


def _keyed(keys: Iterable[str] | dict) -> Any:
    """A table (dict) or set of canonical keys that an int value finds too: the canonical form
    of an int is its text, so int keys spare generated code a str() per value."""
    ints = {k: _int_form(k) for k in keys}
    if isinstance(keys, dict):
        return {**keys, **{n: keys[k] for k, n in ints.items() if n is not None}}
    return frozenset(ints) | {n for n in ints.values() if n is not None}


def _storable(rt: Runtime, v: object) -> bool:
    """Whether the point rule stores V as it is (else refuses it: NaN, infinities)."""
    fields: dict = {}
    rt.keep(fields, [], "x", v)
    return "x" in fields


class _Writer:
    """Source lines, the constants they name, and fresh variable names."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lines: list[str] = []
        self.ns: dict[str, object] = {"__builtins__": _BUILTINS, "M": rt.missing}
        self._const_ids: dict[int, str] = {}
        self._n = 0

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def var(self, prefix: str = "v") -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, obj: object) -> str:
        """A name bound to OBJ in the function's namespace."""
        name = self._const_ids.get(id(obj))
        if name is None or self.ns[name] is not obj:
            name = self._const_ids[id(obj)] = f"_k{len(self.ns)}"
            self.ns[name] = obj
        return name

    def lit(self, v: object) -> str:
        """Source for a constant: a literal for exact str and int, else a bound name."""
        if type(v) is str:
            return str.__repr__(v)  # type: ignore[arg-type]
        if type(v) is int:
            return int.__repr__(v)  # type: ignore[arg-type]
        if v is None or type(v) is bool:
            return "None" if v is None else "True" if v else "False"
        return self.const(v)

    def function(self, name: str, args: str) -> Callable:
        """The function NAME(ARGS) whose body is the lines written, for an orjson document; its
        attribute `exact`: the same code for a json document (see Runtime.checked)."""
        self.lines.insert(0, f"def {name}({args}):")
        source = "\n".join(self.lines) + "\n"
        code = compile(source, f"<mqtt mapping {next(_SERIAL)}>", "exec")
        exact_ns = dict(self.ns)
        exec(code, exact_ns)  # noqa: S102 - source built here from constants only (see module doc)
        checked_ns = {**self.ns, **self.rt.checked}
        exec(code, checked_ns)  # noqa: S102
        fn = checked_ns[name]
        fn.exact = exact_ns[name]  # type: ignore[attr-defined]
        fn.__source__ = source  # type: ignore[attr-defined]  # for debugging and tests
        return fn  # type: ignore[return-value]


# --- reading values -------------------------------------------------------------------------------

class _Scope:
    """Where refs are read: the payload d with captures CAPS (a root scope, or a branch of one
    that reads what its parent did not), or one exploded ITEM."""

    def __init__(self, w: _Writer, parent: "_Scope | None" = None, item: str | None = None,
                 caps: str = "caps") -> None:
        self.w = w
        self.parent = parent
        self.item = item  # the item variable, in an item scope
        self.caps = caps  # the captures variable
        self.vars: dict[str, str] = {}  # ref -> variable
        self.prefixes: dict[tuple, str] = {}  # payload path (parts) -> variable, prefixes too
        self.keys: dict[tuple[str, ...], tuple[str, str | None]] = {}  # refs -> (raw var, canonical var)
        #: Set once the keys of the scope are computed (at its top): a key made later would sit
        #: in a branch that may not run.
        self.frozen = False

    def owns(self, ref: str) -> bool:
        if self.item is not None:
            return ref.startswith("@item")
        if self.parent is not None:  # a branch
            return not self.parent.has(ref)
        return True

    def has(self, ref: str) -> bool:
        return ref in self.vars or self.parent is not None and self.parent.has(ref)

    def read_all(self, refs: Iterable[str], indent: int, root_is_dict: bool) -> None:
        """Read every ref this scope owns that is not read yet, each payload prefix once."""
        paths: dict[tuple, str] = {}
        item_paths: dict[tuple, str] = {}
        for ref in dict.fromkeys(refs):
            if ref in self.vars or (self.parent is not None and not self.owns(ref)):
                continue
            v = self.vars[ref] = self.w.var()
            if ref[0] != "@":
                paths[path_parts(ref)] = v
            elif ref.startswith("@topic."):
                self.w.line(indent, f"{v} = {self.caps}.get({self.w.lit(ref[7:])}, M)")
            elif ref == "@item":
                self.w.line(indent, f"{v} = {self.item or 'M'}")
            elif ref.startswith("@item.") and self.item is not None:
                item_paths[path_parts(ref[6:])] = v
            elif ref.startswith("@item."):
                self.w.line(indent, f"{v} = M")
            else:  # not a valid ref after validation; read as the payload path it spells
                paths[path_parts(ref)] = v
        # a path continues from the longest prefix read before, in this scope or above
        starts: dict[tuple[str, tuple], dict[tuple, str]] = {}
        for parts, v in paths.items():
            n, root = next(((n, r) for n in range(len(parts) - 1, 0, -1)
                            if (r := self.prefix(parts[:n])) is not None), (0, "d"))
            starts.setdefault((root, parts[:n]), {})[parts[n:]] = v
        for (root, at), rel in starts.items():
            read = _emit_trie(self.w, indent, root, rel, root_is_dict and root == "d")
            self.prefixes.update({at + k: var for k, var in read.items()})
        if item_paths:
            _emit_trie(self.w, indent, self.item or "M", item_paths, False)

    def prefix(self, parts: tuple) -> str | None:
        """The variable holding the payload value at PARTS, if read in this scope or above."""
        if parts in self.prefixes:
            return self.prefixes[parts]
        return self.parent.prefix(parts) if self.parent is not None else None

    def raw(self, ref: str) -> str:
        scope: _Scope | None = self
        while scope is not None:
            if ref in scope.vars:
                return scope.vars[ref]
            scope = scope.parent
        raise KeyError(ref)

    def key(self, refs: list[str], indent: int, canonical: bool) -> tuple[str, str | None]:
        """The raw value of a ref list (joined when several) and, if asked, its canonical form."""
        k = tuple(refs)
        have = None
        scope: _Scope | None = self
        while scope is not None and have is None:
            have = scope.keys.get(k)
            scope = scope.parent
        if have is not None and (have[1] is not None or not canonical):
            return have
        if self.frozen:
            raise RuntimeError(f"codegen: the key of {refs!r} was not planned")
        w = self.w
        if have is not None:
            raw = have[0]
        elif len(refs) == 1:
            raw = self.raw(refs[0])
        else:
            raw = w.var("k")
            parts = [self.raw(r) for r in refs]
            ints = " and ".join(f"type({p}) is int" for p in parts)
            joined = "/".join("{" + p + "}" for p in parts)
            w.line(indent, f"{raw} = f\"{joined}\" if {ints} else join(({', '.join(parts)},))")
        c = None
        if canonical:
            c = w.var("c")
            if len(refs) == 1:  # an int stands for its canonical text: tables hold both (_keyed)
                w.line(indent, f"{c} = {raw} if (ty := type({raw})) is int else canon_str({raw}) if ty is str "
                               f"else ('true' if {raw} else 'false') if ty is bool else key_of({raw})")
            else:  # a joined key is canonical already (canonical parts, "/" in between)
                w.line(indent, f"{c} = None if {raw} is M else {raw}")
        self.keys[k] = (raw, c)
        return raw, c

    def plan(self, conds: Iterable[Cond], maps: Iterable[FieldMap], indent: int) -> None:
        """Compute, at INDENT, every key and canonical form CONDS and MAPS need; then freeze."""
        for c in conds:
            if self._mine(c.refs):
                self.key(c.refs, indent, canonical=c.exists is None)
        for fm in maps:
            if fm.value is None and self._mine(fm.refs):
                cf = self.w.rt.field(fm)
                self.key(fm.refs, indent, canonical=cf.enum is not None or cf.ignore is not None)
        self.frozen = True

    def _mine(self, refs: list[str]) -> bool:
        """Whether a key of REFS belongs to this scope (an item scope: it reads the item)."""
        return self.item is None or any(self.owns(r) for r in refs)


def _emit_trie(w: _Writer, indent: int, root: str, paths: dict[tuple, str], root_is_dict: bool) -> dict[tuple, str]:
    """Read PATHS (parts relative to ROOT -> variable), each prefix once; return the variable of
    every prefix read (all are assigned, missing where the path is not there)."""
    trie: dict = {}
    for parts, var in paths.items():
        if not parts:
            w.line(indent, f"{var} = {root}")
            continue
        node = trie
        for p in parts:
            node = node.setdefault(p, {})
        node[_LEAF] = var
    read: dict[tuple, str] = {}
    _emit_node(w, indent, root, trie, root_is_dict, (), read)
    return read


def _emit_node(w: _Writer, indent: int, x: str, node: dict, known_dict: bool, at: tuple,
               read: dict[tuple, str]) -> None:
    """Read the children of NODE from the value in X (as the reference getters do: a key of a
    dict, an index of a list, else missing), recording their variables in READ."""
    for want in (str, int):
        kids = [(p, n) for p, n in node.items() if p is not _LEAF and type(p) is want]
        if not kids:
            continue
        inner = indent
        if not (want is str and known_dict):
            w.line(indent, f"if type({x}) is {'dict' if want is str else 'list'}:")
            inner = indent + 1
        before = set(read)
        for p, n in kids:
            y = read[at + (p,)] = n.get(_LEAF) or w.var("x")
            if want is str:
                w.line(inner, f"{y} = {x}.get({w.lit(p)}, M)")
            else:
                w.line(inner, f"{y} = {x}[{w.lit(p)}] if len({x}) > {w.lit(p)} else M")
            if any(k is not _LEAF for k in n):
                _emit_node(w, inner, y, n, False, at + (p,), read)
        if inner != indent:
            w.line(indent, "else:")
            w.line(inner, " = ".join(v for k, v in read.items() if k not in before) + " = M")


# --- conditions -----------------------------------------------------------------------------------

def _cond_expr(w: _Writer, scope: _Scope, cond: Cond, indent: int) -> str:
    """A boolean expression for COND (its values read and keyed before, at INDENT)."""
    if cond.exists is not None:
        raw, _ = scope.key(cond.refs, indent, canonical=False)
        return f"({raw} is not M and {raw} is not None)" if cond.exists else \
            f"({raw} is M or {raw} is None)"
    _, c = scope.key(cond.refs, indent, canonical=True)
    # c is None when the value is absent or not a scalar: false, except for not_in
    if cond.equals is not None:
        want = _keyed({canon(cond.equals)})
        return f"{c} == {w.lit(next(iter(want)))}" if len(want) == 1 else f"{c} in {w.const(want)}"
    if cond.in_ is not None:
        return f"{c} in {w.const(_keyed(canon(x) for x in cond.in_))}"
    if cond.not_in is not None:
        return f"{c} not in {w.const(_keyed(canon(x) for x in cond.not_in))}"
    text = f"(str({c}) if type({c}) is int else {c})"
    return f"({c} is not None and {text}.startswith({w.lit(cond.prefix or '')}))"


def _conds(w: _Writer, scope: _Scope, conds: list[Cond], indent: int) -> str:
    scope.read_all([r for c in conds for r in c.refs], indent, root_is_dict=scope.parent is None)
    return " and ".join(_cond_expr(w, scope, c, indent) for c in conds) or "True"


def reader(ref: str, rt: Runtime) -> Callable[[object, dict], object]:
    """read(payload, captures) -> the value REF names, or the missing sentinel."""
    w = _Writer(rt)
    scope = _Scope(w)
    scope.read_all([ref], 1, root_is_dict=False)
    w.line(1, f"return {scope.raw(ref)}")
    return w.function("read", "d, caps")


def _bind(w: _Writer) -> None:
    rt = w.rt
    w.ns.update(join=rt.join, key_of=rt.key_of, canon_str=rt.canon_str, value=rt.value, put=rt.put,
                put_tag=rt.put_tag, keep=rt.keep, timestamp=rt.timestamp, device_id=rt.device_id,
                device_ids=rt.device_ids, person_of=rt.person, snapshot=rt.snapshot, items=rt.items,
                Point=rt.point, Mapped=rt.mapped, MapError=rt.map_error)


# --- fields and tags ------------------------------------------------------------------------------

def _store(w: _Writer, target: str, name: str, value: str, static: object = None,
           is_tag: bool = False) -> str:
    """A statement storing VALUE (source) as NAME; STATIC is the value when it is a constant."""
    n = w.lit(name)
    if is_tag:
        return f"{target}[{n}] = {value}"
    if static is not None and not _storable(w.rt, static):
        return f"put(f, rf, {n}, {value})"
    return f"f[{n}] = {value}"


def _default(w: _Writer, fm: FieldMap, is_tag: bool) -> str | None:
    """The statement for "no value": store the default, or nothing (None)."""
    d = fm.default
    if is_tag:
        tag = w.rt.tag_value(d)
        return None if tag is None else _store(w, "t", fm.name, w.lit(tag), is_tag=True)
    if d is None:
        return None
    return _store(w, "f", fm.name, w.lit(d), static=d)


def _general(w: _Writer, fm: FieldMap, raw: str, is_tag: bool) -> list[str]:
    cf = w.const(w.rt.field(fm))
    if is_tag:
        return [f"put_tag(t, {w.lit(fm.name)}, value({cf}, {raw}, w))"]
    return [f"x = value({cf}, {raw}, w)", f"if x is not None: put(f, rf, {w.lit(fm.name)}, x)"]


def _value_field(w: _Writer, scope: _Scope, fm: FieldMap, indent: int,
                 is_tag: bool) -> list[tuple[str, list[str]]]:
    """The branches (condition, statements) that map FM; the last condition is "else"."""
    cf = w.rt.field(fm)
    target = "t" if is_tag else "f"
    if fm.value is not None:  # a constant
        if is_tag:
            tag = w.rt.tag_value(fm.value)
            return [("else", [] if tag is None else [_store(w, target, fm.name, w.lit(tag), is_tag=True)])]
        return [("else", [_store(w, target, fm.name, w.lit(fm.value), static=fm.value)])]
    ignore = cf.ignore
    raw, c = scope.key(fm.refs, indent, canonical=cf.enum is not None or ignore is not None)
    kept = f" and {c} not in {w.const(_keyed(ignore))}" if ignore is not None else ""  # ignored: no value
    general = _general(w, fm, raw, is_tag)
    default = _default(w, fm, is_tag)
    absent = f"{raw} is M or {raw} is None"
    out: list[tuple[str, list[str]]] = []
    if cf.enum is not None:
        hits = {k: v[1] for k, v in cf.enum.items() if v[0]}
        if is_tag:
            hits = {k: t for k, t in ((k, w.rt.tag_value(v)) for k, v in hits.items()) if t is not None}
        empty = f" and {raw} != \"\"" if "" in cf.enum else ""  # "" is no value, even if a key
        h = w.var("h")
        w.line(indent, f"{h} = {w.const(_keyed(hits))}.get({c})")
        out.append((f"{h} is not None{empty}{kept}", [_store(w, target, fm.name, h, is_tag=is_tag)]))
        if not (fm.required and fm.default is None):  # a code outside the table: the default
            missing_empty = f" and {raw} != \"\"" if fm.required else ""
            out.append((f"{c} is not None and {c} not in {w.const(_keyed(cf.enum))}{missing_empty}{kept}",
                        [default or "pass"]))
    else:
        tests = _fast_types(w, fm, raw, target, is_tag)
        out += [(f"{cond}{kept}", [stmt]) for cond, stmt in tests]
        absent += f" or {raw} == \"\""
    if not fm.required:
        out.append((absent, [default or "pass"]))
    out.append(("else", general))
    return out


def _fast_types(w: _Writer, fm: FieldMap, raw: str, target: str, is_tag: bool) -> list[tuple[str, str]]:
    """Type tests under which the field's value is a simple expression of the raw value (what
    the general coercion gives)."""
    if is_tag:
        return []
    ml = w.lit(fm.max_len)
    as_str = f"{raw}[:{ml}]"
    big = float.__repr__(float(w.rt.big))
    small = f"-{big} < {raw} < {big}"  # finite, and not maybe an integer orjson rounded
    t = fm.type

    def put(v: str) -> str:
        return _store(w, target, fm.name, v)
    if fm.scale is not None or fm.offset:
        scale = 1 if fm.scale is None else fm.scale
        # Only floats, and factors that keep any such value finite (a store needs no check);
        # the product is the general rule's own arithmetic (num * scale + offset).
        if t != "float" or not all(math.isfinite(x) and abs(x) <= 1e6 for x in (scale, fm.offset)):
            return []
        scaled = put(f"float({raw} * {w.lit(scale)} + {w.const(float(fm.offset))})")
        return [(f"(type({raw}) is int or type({raw}) is float) and {small}", scaled)]
    if t == "int":  # digits as text (Dahua's ReaderID "1"): what int(float(text)) gives, up to 15
        return [(f"type({raw}) is int", put(raw)),
                (f"type({raw}) is str and {raw}.isdigit() and {raw}.isascii() and len({raw}) < 16",
                 put(f"int({raw})"))]
    if t == "float":
        return [(f"type({raw}) is float and {small}", put(raw))]
    if t == "str":
        return [(f"type({raw}) is str and {raw} != \"\"", put(as_str)),
                (f"type({raw}) is int", put(f"str({raw})[:{ml}]"))]
    if t == "bool":
        return [(f"type({raw}) is bool", put(raw)),
                (f"type({raw}) is int and ({raw} == 0 or {raw} == 1)", put(f"{raw} == 1"))]
    return [(f"type({raw}) is int or type({raw}) is bool", put(raw)),
            (f"type({raw}) is str and {raw} != \"\"", put(as_str)),
            (f"type({raw}) is float and {small}", put(raw))]


def _emit_branches(w: _Writer, indent: int, branches: list[tuple[str, list[str]]]) -> None:
    if len(branches) == 1:
        for s in branches[0][1] or ["pass"]:
            w.line(indent, s)
        return
    for i, (cond, stmts) in enumerate(branches):
        head = "else:" if cond == "else" else f"{'if' if i == 0 else 'elif'} {cond}:"
        w.line(indent, head)
        for s in stmts or ["pass"]:
            w.line(indent + 1, s)


def _maps(w: _Writer, scope: _Scope, maps: list[FieldMap], indent: int, is_tag: bool,
          options: dict[str, str]) -> None:
    seen: set[str] = set()
    for fm in maps:
        guards = []
        if fm.if_option is not None:  # the device's options enable or disable a mapping
            guards.append(options[fm.if_option])
        if fm.unless_option is not None:
            guards.append(f"not {options[fm.unless_option]}")
        if fm.name in seen:  # a later mapping of a name: only if the earlier ones gave nothing
            n = w.lit(fm.name)
            guards.append(f"{n} not in t" if is_tag else f"{n} not in f and {n} not in rf")
        seen.add(fm.name)
        inner = indent
        if guards:
            w.line(indent, f"if {' and '.join(guards)}:")
            inner = indent + 1
        branches = _value_field(w, scope, fm, inner, is_tag)
        _emit_branches(w, inner, branches)


# --- messages ------------------------------------------------------------------------------------

def _point(w: _Writer, scope: _Scope, p: PointSpec, options: dict[str, str], indent: int) -> None:
    tags, fields = p.tags, p.fields
    rt = w.rt
    item = None
    if p.explode is not None:
        item = w.var("it")
        w.line(indent, f"for {item} in items({w.const(p.explode)}, {scope.raw(p.explode.ref)}):")
        indent += 1
        scope = _Scope(w, scope, item)
        scope.read_all([r for m in [*tags, *fields] for r in m.refs] + [r for c in p.when for r in c.refs],
                       indent, root_is_dict=False)
        scope.plan(p.when, [*tags, *fields], indent)
    if p.when:
        expr = _conds(w, scope, p.when, indent)
        if item is not None:
            w.line(indent, f"if not ({expr}):")
            w.line(indent + 1, "continue")
        else:
            w.line(indent, f"if {expr}:")
            indent += 1
    w.line(indent, "t = {}")
    w.line(indent, "f = {}")
    w.line(indent, "rf = []")
    _maps(w, scope, tags, indent, True, options)
    _maps(w, scope, fields, indent, False, options)
    if p.person:
        w.line(indent, "if person is not None:")
        w.line(indent + 1, "if type(person) is str: f['person'] = person")
        w.line(indent + 1, "else: keep(f, rf, 'person', person)")
    w.line(indent, "if ex: f.update(ex)")  # time_corrected, device_time: a bool and a str
    w.line(indent, "if rf: w.extend([n + ': not a storable value' for n in rf])")
    w.line(indent, "if not f: f = {'count': 1}")
    prio = w.const(rt.priority_of(p.measurement))
    w.line(indent, f"pts.append(Point({w.lit(p.measurement)}, t, f, ts, {prio}))")


def route(profile: MqttProfile, candidates: list[tuple[Any, int]], rt: Runtime) -> Callable:
    """map(d, caps, options, privacy, now_ns, window) -> Mapped, for messages sharing a topic.

    CANDIDATES are (mapper._CMessage, the index of its captures in caps), in profile order: the
    first whose match holds maps the payload (MapError unknown_message if none); the profile's
    signature is tested first, on the first captures (wrong_dialect). OPTIONS override the
    profile's per device. What the tests read, the mappings do not read again.
    """
    signature, profile_id = profile.signature, profile.id
    w = _Writer(rt)
    _bind(w)
    groups = max(g for _, g in candidates) + 1
    scopes = [_Scope(w, caps=f"caps{g}") for g in range(groups)]
    for g, scope in enumerate(scopes):
        conds = [c for cm, cg in candidates if cg == g for c in cm.spec.match] + (signature if g == 0 else [])
        w.line(1, f"caps{g} = caps[{g}]")
        scope.read_all([r for c in conds for r in c.refs], 1, root_is_dict=True)
        scope.plan(conds, [], 1)
    if signature:
        w.line(1, f"if not ({_conds(w, scopes[0], signature, 1)}):")
        w.line(2, f"raise MapError('wrong_dialect', {w.lit(f'payload does not look like {profile_id}')})")
    for cm, g in candidates:
        w.line(1, f"if {_conds(w, scopes[g], cm.spec.match, 1)}:")
        w.line(2, f"opts = {{**{w.const(profile.options)}, **options}} if options else {w.const(profile.options)}")
        _body(w, _Scope(w, scopes[g], caps=f"caps{g}"), cm, 2)
    w.line(1, f"raise MapError('unknown_message', {w.lit(f'no message of {profile_id} recognises this payload')})")
    return w.function("map_message", "d, caps, options, privacy, now_ns, window")


def _body(w: _Writer, scope: _Scope, cm: Any, indent: int) -> None:
    """Map the payload as the message CM (a mapper._CMessage) and return the Mapped."""
    rt = w.rt
    m: MessageSpec = cm.spec
    dev_ref = m.device_id or cm.device_ref
    person_refs = m.privacy.person if any(p.person for p in m.points) else []
    refs = [dev_ref, *(t.ref for t in m.time), *person_refs]
    refs += [m.privacy.snapshot] if m.privacy.snapshot is not None else []
    for p in m.points:
        refs += [p.explode.ref] if p.explode is not None else []
        refs += [r for c in p.when for r in c.refs] + [r for x in [*p.tags, *p.fields] for r in x.refs]
    scope.read_all(refs, indent, root_is_dict=True)

    def per_message(refs: list[str], p: PointSpec) -> bool:  # else made per exploded item
        return p.explode is None or not any(r.startswith("@item") for r in refs)
    scope.plan([c for p in m.points for c in p.when if per_message(c.refs, p)],
               [x for p in m.points for x in [*p.tags, *p.fields] if per_message(x.refs, p)], indent)
    options: dict[str, str] = {}
    for name in dict.fromkeys(o for p in m.points for x in [*p.tags, *p.fields]
                              for o in (x.if_option, x.unless_option) if o is not None):
        options[name] = w.var("on")
        w.line(indent, f"{options[name]} = bool(opts.get({w.lit(name)}))")
    w.line(indent, "w = []")
    dv = scope.raw(dev_ref)
    w.line(indent, f"dev = device_ids.get({dv}) if type({dv}) is str else None")
    w.line(indent, f"if dev is None: dev = device_id({w.lit(dev_ref)}, {dv})")
    w.line(indent, "ex = {}")
    if m.time:
        raws = [scope.raw(t.ref) for t in m.time]
        t0, cache = raws[0], w.const(cm.time_cache[0])
        window_default = f"({rt.min_time_ns}, now_ns + {rt.max_ahead_ns})"
        w.line(indent, f"lo, hi = window if window is not None else {window_default}")
        # a time string (or epoch number) seen before, inside the window: most messages
        w.line(indent, f"ts = {cache}.get({t0}) if type({t0}) is str or type({t0}) is int else None")
        w.line(indent, "if ts is None or not lo <= ts <= hi:")
        w.line(indent + 1, f"ts = timestamp({w.const(cm)}, ({', '.join(raws)},), lo, hi, now_ns, ex, w)")
    else:
        w.line(indent, "ts = now_ns")  # the dialect carries no time
    if person_refs:
        raws = [scope.raw(r) for r in person_refs]
        absent = w.const(frozenset(m.privacy.absent))
        w.line(indent, f"s = {raws[0]}.strip() if type({raws[0]}) is str else ''")
        w.line(indent, f"person = privacy.pseudonym(s) if s and s not in {absent} "
                       f"else person_of({w.const(m.privacy.absent)}, ({', '.join(raws)},), privacy)")
    w.line(indent, "pts = []")
    for p in m.points:
        _point(w, scope, p, options, indent)
    snap = "None"
    if m.privacy.snapshot is not None:
        snap = f"snapshot({scope.raw(m.privacy.snapshot)}, w)"
    w.line(indent, f"return Mapped(dev, {w.lit(m.kind)}, pts, {snap}, w, {w.lit(m.name)})")
