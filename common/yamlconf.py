"""Load a YAML file and validate it against a pydantic model, once, on load.

Errors name the file, the line and the field, and say what was expected, e.g.

    configs/edge.yaml:7: uplink.url: expected mqtt://HOST:PORT or mqtts://HOST:PORT, got 'tcp://x'

Used for the edge config, the collector config and device profiles: one loader, one error style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: an unknown key is an error (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(Exception):
    """A config or profile file that cannot be used. str() is the message for the installer."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def _to_python(node: yaml.Node, lines: dict[tuple, int], path: tuple) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) \
                else _scalar(key_node)
            if key == "<<":
                merged = _to_python(value_node, lines, path)
                if isinstance(merged, dict):
                    for k, v in merged.items():
                        out.setdefault(k, v)
                continue
            out[key] = _to_python(value_node, lines, path + (key,))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, lines, path + (i,)) for i, v in enumerate(node.value)]
    return _scalar(node)


_constructor = yaml.SafeLoader(stream="")


def _scalar(node: yaml.ScalarNode) -> Any:
    return _constructor.construct_object(node, deep=True)


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and a map from field path to line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    lines: dict[tuple, int] = {}
    if node is None:
        return {}, lines
    return _to_python(node, lines, ()), lines


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _explain(err: dict) -> str:
    kind = err.get("type", "")
    msg = err.get("msg", "invalid")
    got = err.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        return "is not a known setting (check the spelling)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind != "missing" and not isinstance(got, (dict, list)):
        return f"{msg}, got {got!r}"
    return msg


def validation_problems(exc: ValidationError, source: str, lines: dict[tuple, int],
                        prefix: tuple = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        # pydantic puts the union member / validator name in loc; keep only real field keys
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or "function-" in p)))
        full = prefix + loc
        line = _line_for(full, lines)
        where = f"{source}:{line}" if line else source
        problems.append(f"{where}: {format_loc(full)}: {_explain(err)}")
    return problems


def validate(model: type[M], data: Any, source: str, lines: dict[tuple, int] | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, source, lines or {})
        raise ConfigError("\n".join(problems), problems) from None


def load_model(model: type[M], path: str | Path) -> M:
    """Read PATH and validate it as MODEL. Raises ConfigError naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    data, lines = load_yaml_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return validate(model, data, str(path), lines)
