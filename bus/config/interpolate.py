"""``${VAR}`` interpolation of string scalars, and coercion of what came from the environment.

``${VAR}`` is replaced by the variable's value, ``${VAR:-default}`` falls back to ``default``
(which may be empty) when VAR is unset or empty, and ``$${`` writes a literal ``${``. An unset
variable without a default is an issue at the scalar's line. Interpolation runs before schema
validation; a value that came from the environment is a string, so :func:`coerce` turns it
into the integer, number or boolean the schema expects ("8080" → 8080) where that is possible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from bus.config.yamlload import MarkIndex, YamlPath
from bus.errors import ConfigIssue

_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\})?")
_REF = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-.*)?", re.S)
_INT = re.compile(r"[-+]?\d+")
_BOOLS = {"true": True, "false": False}


def interpolate(data: Any, marks: MarkIndex, env: Mapping[str, str],
                issues: list[ConfigIssue]) -> tuple[Any, set[YamlPath], set[YamlPath]]:
    """``data`` with every ``${...}`` replaced, the paths of the scalars that had one, and
    the paths where a reference could not be resolved (issues already reported there)."""
    touched: set[YamlPath] = set()
    failed: set[YamlPath] = set()

    def report(path: YamlPath, message: str) -> None:
        failed.add(path)
        issues.append(marks.issue(path, message))

    def walk(value: Any, path: YamlPath) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            touched.add(path)
            return _expand(value, env, lambda msg: report(path, msg))
        return value

    return walk(data, ()), touched, failed


def _expand(text: str, env: Mapping[str, str], report: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        ref = _REF.fullmatch(match.group("body") or "")
        if not match.group("close") or ref is None:
            report(f"'{match.group(0)}' is not a valid reference; write ${{NAME}} or "
                   "${NAME:-default}, or $${ for a literal '${'")
            return match.group(0)
        name, default = ref.group("name"), ref.group("default")
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default[2:]
        if value is None:
            report(f"environment variable '{name}' is not set; set it, or give a default "
                   f"with ${{{name}:-value}}")
        return value or ""

    return _TOKEN.sub(replace, text)


def coerce(data: Any, schema: Mapping[str, Any], touched: set[YamlPath],
           base: YamlPath = ()) -> bool:
    """Turn interpolated strings into the integer/number/boolean ``schema`` asks for, in place.

    ``base`` is where ``data`` sits in the file (paths in ``touched`` are file paths).
    Strings that cannot be converted are left alone: validation then reports them.
    Returns True when ``data`` is now valid (every error this pass found was a converted string
    whose new value fits its schema), so the caller need not validate again: a full pass over
    flows.yaml costs ~0.1 s of start-up.
    """
    if not touched:
        return False
    validator = jsonschema.validators.validator_for(schema)(schema)
    valid = True
    for error in validator.iter_errors(data):
        fixed = None
        for each in _all_errors([error]):
            value = _fix(each, data, base, touched)
            if each is error:
                fixed = value
        if fixed is None or not validator.evolve(schema=error.schema).is_valid(fixed):
            valid = False
    return valid


def _fix(error: jsonschema.ValidationError, data: Any, base: YamlPath,
         touched: set[YamlPath]) -> Any:
    """Convert the string of a type error at a touched path; the new value, or None."""
    path = (*base, *error.absolute_path)
    if error.validator != "type" or path not in touched or not error.absolute_path:
        return None
    wanted = error.validator_value
    value = _convert(error.instance, [wanted] if isinstance(wanted, str) else wanted)
    if value is not None:
        parent = data
        for part in list(error.absolute_path)[:-1]:
            parent = parent[part]
        parent[error.absolute_path[-1]] = value
    return value


def _all_errors(errors: Any) -> Any:
    # Type errors inside anyOf/oneOf branches sit in .context; coerce those too.
    for error in errors:
        yield error
        yield from _all_errors(error.context or ())


def _convert(text: Any, types: list[str]) -> int | float | bool | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    if "integer" in types and _INT.fullmatch(text):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "boolean" in types and text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    return None
