"""Hypothesis strategies that damage real input files the way people and tools do: a value of the
wrong type, a key deleted or added, text cut or spliced, bytes flipped. Shared by the fuzz tests."""

from __future__ import annotations

import copy
import re

from hypothesis import strategies as st

SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["nan", "1e5", "${DATA_PATH}", "${NOPE}", "--flag", "-1", "0", "", "release", "latest"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
# Characters that matter to YAML and JSON syntax, besides any text.
SYNTAX = st.sampled_from(list(":-{}[],'\"#&*!|>%@`\t\n ") + ["!!python/object/apply:os.system ['true']", "\\u0000",
                                                             "NaN", "1e999", "\ud800"])


def _paths(doc, prefix=()):
    """Every place in a decoded document: containers and leaves, as key/index paths."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _paths(value, prefix + (index,))


def _parent(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate_document(data, doc, extra_keys=st.text(max_size=10)):
    """`doc` with 1-3 structural edits drawn from `data` (hypothesis' st.data())."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        path = data.draw(st.sampled_from(sorted(_paths(doc), key=repr)), label="where")
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]), label="action")
        if not path:
            if action == "replace":
                doc = data.draw(VALUES, label="new document")
            continue
        parent, key = _parent(doc, path), path[-1]
        if action == "replace":
            parent[key] = data.draw(VALUES, label="new value")
        elif action == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][data.draw(extra_keys, label="new key")] = data.draw(VALUES, label="inserted")
        elif isinstance(parent[key], list):
            parent[key].insert(0, data.draw(VALUES, label="inserted"))
    return doc


def mutate_text(data, text: str) -> str:
    """`text` with 1-3 splices: a span cut, replaced or extended with syntax characters or any text."""
    for _ in range(data.draw(st.integers(1, 3), label="splices")):
        start = data.draw(st.integers(0, len(text)), label="start")
        end = data.draw(st.integers(start, min(len(text), start + 40)), label="end")
        insert = data.draw(st.lists(SYNTAX | st.text(max_size=6), max_size=3).map("".join), label="insert")
        text = text[:start] + insert + text[end:]
    return text


def mutate_bytes(data, blob: bytes) -> bytes:
    """`blob` truncated, or with 1-4 bytes changed, inserted or removed."""
    if data.draw(st.booleans(), label="truncate"):
        return blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)), label="length")]
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4), label="byte edits")):
        at = data.draw(st.integers(0, max(len(blob) - 1, 0)), label="at")
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]), label="kind")
        value = data.draw(st.integers(0, 255), label="byte")
        if kind == "set" and blob:
            blob[at] = value
        elif kind == "insert":
            blob.insert(at, value)
        elif blob:
            del blob[at]
    return bytes(blob)


def error_kind(message: str, root: str) -> str:
    """An error message with what varies between examples masked (the folder, quoted values,
    numbers), so that counting kinds counts the different checks that answered."""
    text = message.replace(root, "<dir>")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\d+", "#", text)
    return text[:100]
