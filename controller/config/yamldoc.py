"""A config file's YAML, read within bounds: its plain data and the line of every key path.

PyYAML's safe_load is safe from code execution, not from cost or surprises: a 500-byte file of
nested aliases ("billion laughs") expands to billions of values, a thousand nested brackets
exhaust the recursion limit, `!!int abc` or an impossible date raise ValueError from deep in
the constructor, and a 5000-digit number trips Python's int-to-str limit. This reader refuses
each of them while composing or constructing, with the file, line and key path of the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from controller.config.explain import KeyPath, yaml_problem
from controller.config.problems import ConfigError, ConfigProblem, show_value

MAX_NESTING_DEPTH = 32  # a vigil config nests 5 deep (camera.inject_faults.0.kind)
MAX_VALUES = 10_000  # keys, values and items, counting every alias as the copy it stands for
MAX_NUMBER_CHARS = 40  # no setting's number is written with more than a few digits

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"
# Tags whose values no setting takes; they are refused like any unknown tag. Plain dates are
# read as text instead of timestamps, and `=` as text instead of PyYAML's "value" tag.
_UNSUPPORTED_TAGS = frozenset(
    _YAML_TAG_PREFIX + name for name in ("timestamp", "binary", "set", "omap", "pairs")
)
_UNRESOLVED_TAGS = frozenset(_YAML_TAG_PREFIX + name for name in ("timestamp", "value"))


@dataclass(frozen=True)
class YamlDocument:
    """The document's data (what yaml.safe_load would give), each key path's line, and any
    duplicate keys (safe_load keeps the last one silently)."""

    data: object
    key_lines: dict[KeyPath, int]
    duplicates: list[ConfigProblem]


class _Refused(Exception):
    """Composing stopped at a value beyond a bound."""

    def __init__(self, mark: Any, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None
        self.path = path
        self.message = message


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG_PREFIX) if tag.startswith(_YAML_TAG_PREFIX) else tag


def _refuse_long_number(loader: SafeConstructor, node: yaml.ScalarNode) -> None:
    text = str(loader.construct_scalar(node))
    if len(text) > MAX_NUMBER_CHARS:
        raise ConstructorError(
            None, None,
            f"{show_value(text)} is a number of {len(text)} characters; no setting takes a "
            f"number written with more than {MAX_NUMBER_CHARS}",
            node.start_mark,
        )


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses deep nesting, alias bombs, huge numbers and odd tags."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._depth = 0
        # id(node) -> (values, height) once the node is composed; aliases share their node's.
        self._measured: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(index, yaml.ScalarNode):
            part: str | None = str(index.value)
        elif isinstance(index, int):
            part = str(index)
        else:
            part = None  # the document itself, or a mapping's key
        if part is not None:
            self._path.append(part)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING_DEPTH:
                raise _Refused(event.start_mark, tuple(self._path),
                               f"nesting is deeper than {MAX_NESTING_DEPTH} levels")
            node = super().compose_node(parent, index)
            if node is not None and id(node) not in self._measured:
                if isinstance(event, yaml.AliasEvent):
                    raise _Refused(event.start_mark, tuple(self._path),
                                   f"the alias *{event.anchor} refers to a value that contains it")
                self._measure(node)
            return node
        finally:
            self._depth -= 1
            if part is not None:
                self._path.pop()

    def _measure(self, node: yaml.Node) -> None:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        sizes = [self._measured[id(child)] for child in children]
        values = 1 + sum(size for size, _ in sizes)
        height = 1 + max((depth for _, depth in sizes), default=0)
        path = tuple(self._path)
        if values > MAX_VALUES:
            raise _Refused(node.start_mark, path,
                           f"holds more than {MAX_VALUES} values once its aliases are expanded")
        if height > MAX_NESTING_DEPTH:
            raise _Refused(node.start_mark, path, f"nesting is deeper than {MAX_NESTING_DEPTH} "
                                                  "levels once its aliases are expanded")
        self._measured[id(node)] = (values, height)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as err:
            # PyYAML's scalar constructors let these out for `!!int abc`, `!!bool maybe`, ...
            shown = show_value(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
            reason = f": {err}" if isinstance(err, ValueError) and str(err) else ""
            raise ConstructorError(
                None, None, f"{shown} is not a valid {_short_tag(node.tag)}{reason}", node.start_mark
            ) from err

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        _refuse_long_number(self, node)
        return int(SafeConstructor.construct_yaml_int(self, node))

    def construct_bounded_float(self, node: yaml.ScalarNode) -> float:
        _refuse_long_number(self, node)
        return float(SafeConstructor.construct_yaml_float(self, node))


_BoundedLoader.yaml_constructors = {
    tag: constructor
    for tag, constructor in yaml.SafeLoader.yaml_constructors.items()
    if tag not in _UNSUPPORTED_TAGS
}
_BoundedLoader.add_constructor(_YAML_TAG_PREFIX + "int", _BoundedLoader.construct_bounded_int)
_BoundedLoader.add_constructor(_YAML_TAG_PREFIX + "float", _BoundedLoader.construct_bounded_float)
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _UNRESOLVED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str, filename: str) -> YamlDocument:
    """The document in `text`, read once: composed within bounds, then constructed into plain
    data as yaml.safe_load would. Raises ConfigError naming `filename`, the line and the key
    for invalid YAML, a value beyond a bound, or a value its tag cannot make."""
    try:
        loader = _BoundedLoader(text)  # the reader refuses unprintable characters at once
    except yaml.YAMLError as err:
        raise ConfigError([yaml_problem(err, text, filename)]) from err
    try:
        try:
            root = loader.get_single_node()
        except _Refused as refused:
            key = ".".join(refused.path)
            raise ConfigError([ConfigProblem(filename, refused.line, key, None, refused.message)]) from None
        except yaml.YAMLError as err:
            raise ConfigError([yaml_problem(err, text, filename)]) from err
        key_lines: dict[KeyPath, int] = {}
        duplicates: list[ConfigProblem] = []
        mark_paths: dict[int, KeyPath] = {}
        if root is None:
            return YamlDocument(None, key_lines, duplicates)
        key_lines[()] = root.start_mark.line + 1
        _record_lines(root, (), key_lines, duplicates, filename, mark_paths, active=set())
        try:
            data = loader.construct_document(root)
        except ConstructorError as err:
            raise ConfigError([_construction_problem(err, text, filename, mark_paths, key_lines)]) from err
        except yaml.YAMLError as err:
            raise ConfigError([yaml_problem(err, text, filename)]) from err
    finally:
        loader.dispose()
    return YamlDocument(data, key_lines, duplicates)


def _construction_problem(err: ConstructorError, text: str, filename: str,
                          mark_paths: dict[int, KeyPath], key_lines: dict[KeyPath, int]) -> ConfigProblem:
    """A value its tag cannot make, at the key it belongs to."""
    mark = err.problem_mark
    if mark is None:
        return yaml_problem(err, text, filename)
    line = mark.line + 1
    path = mark_paths.get(id(mark))
    if path is None:  # a mapping's key, which has no key path of its own: take the line's
        on_line = [candidate for candidate, at in key_lines.items() if at == line]
        path = max(on_line, key=len, default=())
    message = str(err.problem).replace(_YAML_TAG_PREFIX, "!!")
    if message.startswith("could not determine a constructor"):
        message += "; write the plain value, without the tag"
    elif err.context and err.context_mark is not None:
        message += f" ({err.context} on line {err.context_mark.line + 1})"
    return ConfigProblem(filename, line, ".".join(path), None, message)


def _record_lines(
    node: yaml.Node,
    path: KeyPath,
    key_lines: dict[KeyPath, int],
    duplicates: list[ConfigProblem],
    filename: str,
    mark_paths: dict[int, KeyPath],
    active: set[int],
) -> None:
    if id(node) in active:  # an alias that refers to its own ancestor
        return
    active.add(id(node))
    mark_paths.setdefault(id(node.start_mark), path)
    if isinstance(node, yaml.MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            # A key that is a list or mapping cannot be constructed; it is reported there.
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
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
            _record_lines(value_node, child, key_lines, duplicates, filename, mark_paths, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, str(index))
            key_lines[child] = item.start_mark.line + 1
            _record_lines(item, child, key_lines, duplicates, filename, mark_paths, active)
    active.discard(id(node))
