"""Reading a config: where it is looked for, the file, its YAML with the line of every key."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from controller.config.explain import problem_from_error
from controller.config.files import FileRefused, read_regular_file
from controller.config.problems import ConfigError, ConfigProblem, kind_of
from controller.config.schema import VigilConfig
from controller.config.yamldoc import read_yaml

SEARCH_PATHS: tuple[Path, ...] = (
    Path("/boot/firmware/vigil.yaml"),
    Path("/etc/vigil/vigil.yaml"),
)
CONFIG_ENV_VAR = "VIGIL_CONFIG"
DEFAULTS_SOURCE = "built-in defaults"
MAX_CONFIG_BYTES = 128 * 1024  # the example config, every key with its comment, is under 10 KiB


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
    document = read_yaml(text, filename)
    data, key_lines, problems = document.data, document.key_lines, list(document.duplicates)

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
        raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES)
    except FileRefused as err:
        reason = err.reason
        if reason.startswith("is larger than"):
            reason += "; a vigil config is a few KiB"
        else:
            reason += "; vigil reads its config only from a regular file"
        raise ConfigError([_file_problem(filename, reason)]) from err
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
