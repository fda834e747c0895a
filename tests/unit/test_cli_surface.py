"""Freezes the `goldtron train` flag surface: every flag, its dest, default, type, nargs, choices.

A Megatron test case depends on these names and defaults; a change here changes what every
model_config.yaml means. So changing the surface is a deliberate act:

    GOLDTRON_UPDATE_CLI_SNAPSHOT=1 pytest tests/unit/test_cli_surface.py   # rewrites the snapshot
    python -m goldtron.config.flags_doc > docs/flags.md                   # re-renders the docs

and the diff of tests/unit/cli_surface_snapshot.json is reviewed with the change. The rewrite
run skips (it never passes), so a forgotten environment variable cannot hide a change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from goldtron.config.flags_doc import render_flags_markdown
from goldtron.config.megatron_flags import NO_EFFECT_FLAGS, UNIMPLEMENTED_FLAGS, UNIMPLEMENTED_PREFIXES
from goldtron.config.parser import build_parser

SNAPSHOT = Path(__file__).with_name("cli_surface_snapshot.json")
FLAGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "flags.md"


def current_surface() -> dict:
    flags = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flags.append({
            "flags": list(action.option_strings),
            "dest": action.dest,
            "default": action.default,
            "type": getattr(action.type, "__name__", None),
            "nargs": action.nargs,
            "choices": list(action.choices) if action.choices else None,
        })
    return {
        "flags": sorted(flags, key=lambda f: f["flags"][0]),
        "no_effect": [entry.flag for entry in NO_EFFECT_FLAGS],
        "refused": sorted(UNIMPLEMENTED_FLAGS) + sorted(p + "*" for p in UNIMPLEMENTED_PREFIXES),
    }


def dump_surface(surface: dict) -> str:
    """JSON with one line per flag, so a snapshot diff shows exactly the flags that changed."""
    sections = []
    for key, items in surface.items():
        body = ",\n".join("  " + json.dumps(item) for item in items)
        sections.append(f' "{key}": [\n{body}\n ]')
    return "{\n" + ",\n".join(sections) + "\n}\n"


def test_cli_surface_matches_snapshot():
    surface = current_surface()
    if os.environ.get("GOLDTRON_UPDATE_CLI_SNAPSHOT") == "1":
        SNAPSHOT.write_text(dump_surface(surface))
        pytest.skip(f"rewrote {SNAPSHOT.name}; review its diff and commit it with the change")
    frozen = json.loads(SNAPSHOT.read_text())
    assert surface == frozen, (
        "the `goldtron train` flag surface changed; if deliberate, regenerate the snapshot "
        "(see this file's docstring) and review the diff")


def test_no_flag_is_both_accepted_and_refused():
    accepted = {flag for action in build_parser()._actions for flag in action.option_strings}
    refused = set(UNIMPLEMENTED_FLAGS)
    assert not accepted & refused
    assert not any(flag.startswith(tuple(UNIMPLEMENTED_PREFIXES)) for flag in accepted)


def test_flags_doc_is_rendered_from_the_tables():
    if not FLAGS_DOC.is_file():
        pytest.fail(f"{FLAGS_DOC} is missing: python -m goldtron.config.flags_doc > docs/flags.md")
    assert FLAGS_DOC.read_text() == render_flags_markdown(), (
        "docs/flags.md is stale: python -m goldtron.config.flags_doc > docs/flags.md")
