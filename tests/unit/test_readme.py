"""The README tells what a new user needs: every key of safehold.toml is in its configuration table, and
the set-up it describes matches the scripts."""

from __future__ import annotations

import re
import tomllib
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from safehold.config import ServerSection, Settings, write_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: alert channels: their keys are described in docs/ALERTS.md; the README's `alerts` row names the sections
CHANNELS = ("email", "syslog", "snmp", "webhook", "script")


def configuration_table() -> dict[str, set[str]]:
    """The README's configuration table: section -> the names written in backquotes in its row."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z_.]+)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"`([^`]+)`", match.group(2)))
    return rows


def leaf_keys(data: dict[str, Any], prefix: str = "") -> set[tuple[str, str]]:
    """(section, key) for every value in a parsed safehold.toml, nested sections as ``ha.failover``."""
    keys: set[tuple[str, str]] = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}.{name}" if prefix else name)
        else:
            keys.add((prefix, name))
    return keys


def model_keys(model: type[BaseModel], section: str) -> set[tuple[str, str]]:
    """(section, key) for every field of a settings model, nested models as sections of their own."""
    keys: set[tuple[str, str]] = set()
    for name, field in model.model_fields.items():
        nested = [t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if nested:
            keys |= model_keys(nested[0], f"{section}.{name}")
        else:
            keys.add((section, name))
    return keys


def test_every_key_init_writes_is_in_the_configuration_table(tmp_path: Path) -> None:
    # what 'safehold init' writes: its settings through write_settings (the defaults it does not change)
    write_settings(Settings(server=ServerSection(id=str(uuid.uuid4()), name="vault-1"), data_dir=tmp_path))
    written = leaf_keys(tomllib.loads((tmp_path / "safehold.toml").read_text()))
    assert ("backup", "every_minutes") in written and ("ha.failover", "enabled") in written  # the walk works
    table = configuration_table()
    missing = sorted(f"{section}.{key}" for section, key in written if key not in table.get(section, set()))
    assert not missing, f"keys that 'safehold init' writes but the README's configuration table leaves out: {missing}"


def test_every_configuration_key_is_in_the_table() -> None:
    table = configuration_table()
    keys = {(section, key) for name, field in Settings.model_fields.items() if name != "data_dir"
            for section, key in model_keys(field.annotation, name)}  # type: ignore[arg-type]
    channel_sections = {f"alerts.{c}" for c in CHANNELS}
    missing = sorted(f"{s}.{k}" for s, k in keys if s not in channel_sections and k not in table.get(s, set()))
    assert not missing, f"configuration keys the README's table leaves out: {missing}"
    assert all(f"[alerts.{c}]" in table["alerts"] for c in CHANNELS), "the alerts row names every channel section"
    assert "patroni_url" in table["ha"]  # the other spelling of patroni_urls


def test_the_readme_says_how_to_install_and_reach_the_command() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "(3, 11)" in setup and "Python 3.11 or newer" in README
    assert "scripts/setup" in README and "source .venv/bin/activate" in README and ".venv/bin/safehold" in README
    assert (ROOT / "scripts" / "screenshots").stat().st_mode & 0o111, "scripts/screenshots is executable"
    assert "scripts/screenshots" in README
