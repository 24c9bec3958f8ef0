"""How a config mistake is reported: one problem per line, with file, line, key and value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hw.errors import VigilError

_SHOWN_VALUE_MAX_CHARS = 60


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file, located by line and dotted key.

    `message` is the complete explanation: it shows the offending value where there is one and
    says what is allowed. `line` is 1-based, or None when the problem has no line (a missing
    file, a missing key at the top level). `key` is "" when the problem is the whole file.
    """

    file: str
    line: int | None
    key: str
    value: object
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.key}: {self.message}" if self.key else self.message
        return f"{where}: {what}"


class ConfigError(VigilError, ValueError):
    """The config could not be read or is invalid; `problems` lists every reason found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def show_value(value: object) -> str:
    """`value` as a message shows it: YAML spelling for booleans and null, repr otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = repr(value)
    if len(text) > _SHOWN_VALUE_MAX_CHARS:
        text = text[: _SHOWN_VALUE_MAX_CHARS - 3] + "..."
    return text


def kind_of(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"

