"""Reading warmtransfer.toml: parse, fill in secrets from the environment, validate, cross-check,
and turn every problem into ``file:line: key.path: what is wrong; how to fix it``.

The TOML is parsed by the stdlib `tomllib` (TOML 1.0, strict), and lines come from the small
scanner in `positions` (tomllib keeps no positions; see there for why not another library).
A syntax error is reported at the line tomllib names.

Secrets from the environment: a string value that is exactly ``"${NAME}"``, or an inline table
``{ env = "NAME" }``, is replaced by the variable's value when the file is loaded, in any key
(secrets are the point, but a port or an address may come from the environment too). A variable
that is not set is an error naming it; an empty one counts as set. Partial interpolation
(``"sip:${HOST}"``) is not done: the value is used as written.

Relative file paths (TLS files, the records database, a piper voice, a plan's hold music and
messages folder) are taken from the config file's folder, so a config and its files move
together.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from warmtransfer.config.errors import ConfigError, Located, Problem
from warmtransfer.config.model import Config
from warmtransfer.config.positions import KeyPath, key_lines, line_of

__all__ = ["check_config", "load_config", "path_keys", "resolve_agent"]

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)$")


def load_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    check_agent: bool = False,
) -> Config:
    """Load and check one config file; every problem is a `ConfigError` naming the file.

    `environ` replaces `os.environ` for ``${NAME}`` values (tests). `check_agent` also checks
    the ``[agent]``: what it needs of the config (`Config.agent_problems`, e.g. the scripted
    agent needs a plan) and its entrypoint, imported (what `check-config` and `serve` do).
    """
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError.single(name, f"cannot be read ({reason})", "check the path") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        line = int(found.group(1)) if found else None
        problem = _TOML_POSITION.sub("", message).strip()
        column = f" (column {found.group(2)})" if found else ""
        raise ConfigError.single(
            name,
            f"invalid TOML: {problem}{column}",
            "fix the syntax (https://toml.io)",
            line=line,
        ) from None
    lines = key_lines(text)

    def located(problems: list[Problem]) -> ConfigError:
        return ConfigError([Located(name, line_of(lines, p.path), p) for p in problems])

    env = os.environ if environ is None else environ
    sources: dict[KeyPath, str] = {}
    missing: list[Problem] = []
    data = _fill_env(data, (), env, sources, missing)
    if missing:
        raise located(missing)
    data = _resolve_paths(data, path.parent)
    try:
        config = Config.model_validate(data, context={"defer_checks": True})
    except ValidationError as exc:
        raise located(_problems(exc, data)) from None
    problems = config.problems()
    if problems:
        raise located(problems)
    config._source = path
    config._env = sources
    if check_agent:
        agent_problems = config.agent_problems()
        if agent_problems:
            raise located(agent_problems)
        try:
            resolve_agent(config)
        except ConfigError as exc:
            raise located([p.problem for p in exc.problems]) from None
    return config


def check_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """What `warmtransfer check-config` runs: `load_config` with the agent imported too."""
    return load_config(path, environ=environ, check_agent=True)


def resolve_agent(config: Config) -> Callable[..., Any] | None:
    """The ``[agent]`` function (None for the built-in scripted agent), imported now: a
    mistyped module or function fails before the service answers its first call."""
    entry = config.agent.entrypoint
    if entry == "scripted":
        return None
    module_name, _, function_name = entry.partition(":")

    def fail(problem: str, fix: str) -> ConfigError:
        where = str(config.source) if config.source is not None else "config"
        return ConfigError([Located(where, None, Problem(("agent", "entrypoint"), problem, fix))])

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(
            f"cannot import module {module_name!r} ({exc})",
            "check the name, and that it is installed in this Python or on PYTHONPATH",
        ) from None
    except Exception as exc:  # the module's own code failed while it was imported
        raise fail(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", "fix the module"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise fail(
            f"module {module_name!r} has no {function_name!r}",
            f"name a function defined in {module_name}",
        )
    if not callable(function):
        raise fail(f"{entry} is not a function", f"name a function defined in {module_name}")
    return typing.cast(Callable[..., Any], function)


# -- before validation ------------------------------------------------------------------------


def _fill_env(
    value: Any,
    path: KeyPath,
    env: Mapping[str, str],
    sources: dict[KeyPath, str],
    missing: list[Problem],
) -> Any:
    """Replace ``"${NAME}"`` and ``{ env = "NAME" }`` with the variable's value, everywhere."""
    reference: str | None = None
    if isinstance(value, str):
        found = _ENV_REF.match(value)
        reference = found.group(1) if found else None
    elif isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        reference = value["env"]
    if reference is not None:
        if reference not in env:
            missing.append(
                Problem(
                    path,
                    f"environment variable {reference} is not set",
                    f"set {reference} in the service's environment, or write the value here",
                )
            )
            return value
        sources[path] = reference
        return env[reference]
    if isinstance(value, dict):
        return {
            key: _fill_env(item, (*path, key), env, sources, missing) for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _fill_env(item, (*path, index), env, sources, missing)
            for index, item in enumerate(value)
        ]
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(node: Any, pattern: KeyPath) -> Any:
        if not pattern:
            if isinstance(node, str) and node and not Path(node).is_absolute():
                return str(base / node)
            return node
        head, rest = pattern[0], pattern[1:]
        if isinstance(node, list) and head == "*":
            return [resolve(item, rest) for item in node]
        if not isinstance(node, dict):
            return node
        return {
            key: resolve(item, rest) if head in ("*", key) else item for key, item in node.items()
        }

    for pattern in path_keys(Config):
        data = resolve(data, pattern)
    return data


# -- pydantic's errors, rewritten -------------------------------------------------------------

_KIND_OF = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}
_EXPECTS = (
    ("bool", "should be true or false", "write true or false, without quotes"),
    ("int", "should be a whole number", "write a number without quotes, e.g. 5060"),
    ("float", "should be a number", "write a number without quotes, e.g. 2.5"),
    ("string", "should be a string", 'put it in quotes, e.g. "value"'),
    ("str", "should be a string", 'put it in quotes, e.g. "value"'),
    ("tuple", "should be an array", 'write an array, e.g. ["a", "b"]'),
    ("list", "should be an array", 'write an array, e.g. ["a", "b"]'),
    ("set", "should be an array", 'write an array, e.g. ["a", "b"]'),
    ("frozen_set", "should be an array", 'write an array, e.g. ["a", "b"]'),
    ("dict", "should be a table", "write a [section] or { key = value }"),
    ("model", "should be a table", "write a [section] or { key = value }"),
    ("path", "should be a file path", 'put it in quotes, e.g. "certs/sip.pem"'),
)


def _kind(value: Any) -> str:
    for kind, name in _KIND_OF.items():
        if type(value) is kind:
            return name
    return "a date or time" if value is not None else "nothing"


def _choices(expected: str) -> str:
    """pydantic's "'udp', 'tcp' or 'tls'" (or "'piper', 'openai'") as "udp, tcp or tls"."""
    words = [w.strip().strip("'") for w in expected.replace(" or ", ", ").split(",")]
    words = [word for word in words if word]
    return words[0] if len(words) < 2 else f"{', '.join(words[:-1])} or {words[-1]}"


def _problems(exc: ValidationError, data: Any) -> list[Problem]:
    """pydantic's errors as Problems, without the echoes: an array that is "too short" only
    because its bad items were dropped is not a second problem."""
    errors = exc.errors()
    found = [(error, _problem(error, data)) for error in errors]
    return [
        problem
        for error, problem in found
        if not (
            error["type"] == "too_short"
            and any(
                other.path[: len(problem.path)] == problem.path and other.path != problem.path
                for _, other in found
            )
        )
    ]


def _problem(error: ErrorDetails, data: Any) -> Problem:
    """One pydantic error as a Problem at the key path the file has. Never shows the input,
    which may be a secret, except for a choice among fixed words (never a secret)."""
    path, node = _file_path(error["loc"], data)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    message = error["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        name = str(path[-1]) if path else ""
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            return Problem(path, "unknown key", f"did you mean {close[0]!r}?")
        keys = f" (keys here: {', '.join(allowed)})" if allowed else ""
        return Problem(path, "unknown key", f"remove it{keys}")
    if kind == "missing":
        return Problem(path, "is required", f"add {path[-1]} = ..." if path else None)
    if kind == "literal_error":
        return Problem(
            path,
            f"{error['input']!r} is not supported",
            f"use {_choices(str(ctx.get('expected', '')))}",
        )
    if kind == "union_tag_invalid":
        key = str(ctx.get("discriminator", "")).strip("'")
        if isinstance(node, dict) and key in node:
            path = (*path, key)
        return Problem(
            path,
            f"{ctx.get('tag')!r} is not supported",
            f"use {_choices(str(ctx.get('expected_tags', '')))}",
        )
    if kind == "union_tag_not_found":
        key = str(ctx.get("discriminator", "")).strip("'")
        return Problem((*path, key), "is required", f"add {key} = ...")
    if kind in ("value_error", "assertion_error"):
        return Problem(
            path, message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        )
    for prefix, problem, fix in _EXPECTS:
        if kind.startswith(f"{prefix}_") and ("type" in kind or "parsing" in kind):
            return Problem(path, f"{problem}, not {_kind(error['input'])}", fix)
    first = message[:1].lower() + message[1:]
    return Problem(path, first.removeprefix("input "))


def _file_path(loc: tuple[int | str, ...], data: Any) -> tuple[KeyPath, Any]:
    """pydantic's location as the file's key path: union member names and tags dropped."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        in_table = isinstance(node, dict) and isinstance(part, str) and part in node
        in_array = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_table or in_array:
            node = node[part]
        elif index < len(loc) - 1:
            continue  # a union member or discriminator tag pydantic put in the location
        else:
            node = None
        path.append(part)
    return tuple(path), node


def path_keys(model: type[BaseModel]) -> tuple[KeyPath, ...]:
    """The key paths of every field of `model` (nested models included) that holds a file
    path, "*" standing for any key of a table or item of an array (a plan's name).

    Read off the models rather than listed by hand, so a path field added to a section is
    taken from the config file's folder (`_resolve_paths`), and refused in a plan sent over the
    HTTP API (which must never name files on the server), without anyone remembering to."""
    found: list[KeyPath] = []
    for name, field in model.model_fields.items():
        if _holds_path(field.annotation):
            found.append((name,))
        inner, contained = _models_in(field.annotation)
        prefix: KeyPath = (name, "*") if contained else (name,)
        for sub in inner:
            found += [(*prefix, *key) for key in path_keys(sub)]
    return tuple(dict.fromkeys(found))


def _holds_path(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated or origin in (typing.Union, types.UnionType):
        return any(_holds_path(arg) for arg in typing.get_args(annotation))
    return False


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models an annotation holds, and whether they sit in a container (then a key or an
    index comes before their own keys in a path)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        models: list[type[BaseModel]] = []
        contained = False
        for arg in args:
            inner, inner_contained = _models_in(arg)
            models += inner
            contained = contained or inner_contained
        return models, contained
    if origin in (tuple, list, dict, frozenset, set):
        items = args[1:] if origin is dict else args
        return [model for arg in items for model in _models_in(arg)[0]], True
    return [], False


def _allowed_keys(path: KeyPath) -> list[str]:
    """The keys a table at `path` accepts (for "did you mean"); [] when not known."""
    models: list[type[BaseModel]] = [Config]
    skip = False
    for part in path:
        if skip:
            skip = False
            continue
        found: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is not None:
                inner, contained = _models_in(field.annotation)
                found += inner
                skip = skip or contained
        models = found
    keys: dict[str, None] = {}
    for model in models:
        keys.update(dict.fromkeys(model.model_fields))
    return list(keys)
