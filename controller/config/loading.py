"""Reading a config: where it is looked for, the file, its YAML with the line of every key."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.config.explain import KeyPath, problem_from_error, yaml_problem
from controller.config.problems import ConfigError, ConfigProblem, kind_of
from controller.config.schema import VigilConfig

SEARCH_PATHS: tuple[Path, ...] = (
    Path("/boot/firmware/vigil.yaml"),
    Path("/etc/vigil/vigil.yaml"),
)
CONFIG_ENV_VAR = "VIGIL_CONFIG"
DEFAULTS_SOURCE = "built-in defaults"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from."""

    config: VigilConfig
    source: str  # the file's path, or DEFAULTS_SOURCE


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    search_paths: Sequence[Path] = SEARCH_PATHS,
) -> LoadedConfig:
    """The config from `path`, else $VIGIL_CONFIG, else the first existing search path, else
    the built-in defaults.

    A file named by `path` or $VIGIL_CONFIG must exist: a typo there is an error, not a silent
    fallback to defaults. Raises ConfigError for any file that cannot be read or is invalid.
    """
    environ = os.environ if env is None else env
    if path is not None:
        return _load_file(Path(path), named_by="named explicitly")
    named = environ.get(CONFIG_ENV_VAR, "")
    if named:
        return _load_file(Path(named), named_by=f"named by ${CONFIG_ENV_VAR}")
    for candidate in search_paths:
        if _may_exist(candidate):
            return _load_file(candidate, named_by=None)
    return LoadedConfig(VigilConfig(), DEFAULTS_SOURCE)


def parse_config_text(text: str, filename: str) -> VigilConfig:
    """The validated config in YAML `text`; raises ConfigError naming `filename` and lines."""
    try:
        data, key_lines, problems = _read_yaml(text, filename)
    except yaml.YAMLError as err:
        raise ConfigError([yaml_problem(err, text, filename)]) from err

    if data is None:  # an empty file, or one holding only comments
        data = {}
    if not isinstance(data, dict):
        sections = ", ".join(VigilConfig.model_fields)
        problem = ConfigProblem(
            filename,
            key_lines.get(()),
            "",
            data,
            f"the top level must be a mapping of sections ({sections}); found {kind_of(data)}",
        )
        raise ConfigError([problem])

    try:
        config = VigilConfig.model_validate(data)
    except ValidationError as err:
        problems.extend(problem_from_error(error, filename, key_lines) for error in err.errors())
    else:
        if not problems:
            return config
    problems.sort(key=lambda problem: problem.line or 0)
    raise ConfigError(problems)


def _may_exist(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        # Something is there that we may not look at (permissions): let reading report it.
        return True


def _load_file(path: Path, *, named_by: str | None) -> LoadedConfig:
    filename = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        reason = "config file not found" + (f" ({named_by})" if named_by else "")
        raise ConfigError([_file_problem(filename, reason)]) from err
    except IsADirectoryError as err:
        raise ConfigError([_file_problem(filename, "is a directory, not a config file")]) from err
    except PermissionError as err:
        raise ConfigError([_file_problem(filename, "cannot be read: permission denied")]) from err
    except OSError as err:
        reason = f"cannot be read: {err.strerror or err}"
        raise ConfigError([_file_problem(filename, reason)]) from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        problem = ConfigProblem(
            filename, line, "", None, f"is not UTF-8 text (invalid byte at offset {err.start})"
        )
        raise ConfigError([problem]) from err
    return LoadedConfig(parse_config_text(text, filename), filename)


def _file_problem(filename: str, message: str) -> ConfigProblem:
    return ConfigProblem(filename, None, "", None, message)


def _read_yaml(text: str, filename: str) -> tuple[object, dict[KeyPath, int], list[ConfigProblem]]:
    """The document's data (safe_load semantics), the line of every key path, and duplicate keys.

    The document is parsed once: the composed node tree gives the lines, the same tree is then
    constructed into plain data exactly as yaml.safe_load would.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    key_lines: dict[KeyPath, int] = {}
    duplicates: list[ConfigProblem] = []
    if root is not None:
        key_lines[()] = root.start_mark.line + 1
        _record_lines(root, (), key_lines, duplicates, filename, active=set())
    return data, key_lines, duplicates


def _record_lines(
    node: yaml.Node,
    path: KeyPath,
    key_lines: dict[KeyPath, int],
    duplicates: list[ConfigProblem],
    filename: str,
    active: set[int],
) -> None:
    if id(node) in active:  # an alias that refers to its own ancestor
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                # safe_load silently keeps the last value; a repeated key is almost always a slip.
                duplicates.append(
                    ConfigProblem(
                        filename,
                        line,
                        ".".join(child),
                        None,
                        f"duplicate key; it is already set on line {first_lines[key]}",
                    )
                )
            else:
                first_lines[key] = line
            key_lines[child] = line
            _record_lines(value_node, child, key_lines, duplicates, filename, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, str(index))
            key_lines[child] = item.start_mark.line + 1
            _record_lines(item, child, key_lines, duplicates, filename, active)
    active.discard(id(node))

