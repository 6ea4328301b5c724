"""Writing a daemon config file from dotted keys, for tests and benchmarks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, values: Mapping[str, Any]) -> Path:
    """Write dotted keys (``"assemblyai.base_url"``) as a TOML file; returns ``path``."""
    tables: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        table, _, key = dotted.rpartition(".")
        tables.setdefault(table, {})[key] = value
    lines: list[str] = []
    for table in sorted(tables, key=lambda t: (t != "", t)):
        if table:
            lines.append(f"\n[{table}]")
        lines.extend(f"{key} = {toml_value(v)}" for key, v in tables[table].items())
    path.write_text("\n".join(lines) + "\n")
    return path
