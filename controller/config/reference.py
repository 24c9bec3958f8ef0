"""The configuration reference, generated from the schema: the README table and the example file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from controller.config.loading import CONFIG_ENV_VAR, SEARCH_PATHS
from controller.config.schema import EXPANDED, MACHINE_DEFAULT, VigilConfig

_COMMENT_WIDTH_CHARS = 96


def describe_defaults() -> str:
    """The default config as YAML: every key with its default value and its meaning as a comment.

    The text parses back to the defaults, so it serves as an example config file.
    """
    searched = ", then ".join(str(path) for path in SEARCH_PATHS)
    lines = _comment(
        "vigil configuration. Every key is optional; each is shown with its default value. "
        f"vigil reads the file named by ${CONFIG_ENV_VAR}, else {searched}.",
        indent="",
    )
    defaults = VigilConfig()
    for section_name, section_field in VigilConfig.model_fields.items():
        section = getattr(defaults, section_name)
        lines.append("")
        lines.extend(_comment(section_field.description or "", indent=""))
        lines.append(f"{section_name}:")
        for index, (name, field) in enumerate(type(section).model_fields.items()):
            if index:
                lines.append("")
            lines.extend(_comment(field.description or "", indent="  "))
            if _is_expanded(field):
                nested = getattr(section, name)
                lines.append(f"  {name}:")
                for sub_name, sub_field in type(nested).model_fields.items():
                    lines.extend(_comment(sub_field.description or "", indent="    "))
                    lines.append(f"    {sub_name}: "
                                 f"{_yaml_value(_shown_default(nested, sub_name, sub_field))}")
                continue
            lines.append(f"  {name}: {_yaml_value(_shown_default(section, name, field))}")
    return "\n".join(lines) + "\n"


def reference_table() -> str:
    """The configuration reference as a Markdown table: key, default, meaning.

    The README carries this table verbatim; a test fails when they differ.
    """
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    defaults = VigilConfig()
    for section_name in VigilConfig.model_fields:
        section = getattr(defaults, section_name)
        for name, field in type(section).model_fields.items():
            if _is_expanded(field):
                nested = getattr(section, name)
                rows.extend(_row(f"{section_name}.{name}.{sub}", nested, sub, sub_field)
                            for sub, sub_field in type(nested).model_fields.items())
                continue
            rows.append(_row(f"{section_name}.{name}", section, name, field))
    return "\n".join(rows) + "\n"


def _row(key: str, section: BaseModel, name: str, field: FieldInfo) -> str:
    value = _yaml_value(_shown_default(section, name, field))
    description = (field.description or "").replace("|", "\\|")
    return f"| `{key}` | `{value}` | {description} |"


def _is_expanded(field: FieldInfo) -> bool:
    """A sub-section the reference lists key by key (`recording.adaptive.enabled`, ...)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(EXPANDED))


def _shown_default(section: BaseModel, name: str, field: FieldInfo) -> object:
    """The default as the reference shows it: null for a default that depends on the machine
    (the field reads null as "this machine's default"), the value otherwise."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get(MACHINE_DEFAULT):
        return None
    return getattr(section, name)


def _comment(description: str, indent: str) -> list[str]:
    width = _COMMENT_WIDTH_CHARS - len(indent) - 2
    return [f"{indent}# {line}" for line in textwrap.wrap(description, width=width)]


def _yaml_value(value: object) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    elif isinstance(value, Path):
        value = str(value)
    elif isinstance(value, list):
        value = [str(item) if isinstance(item, Path) else item for item in value]
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return dumped.removesuffix("...\n").strip()


