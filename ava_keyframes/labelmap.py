"""AVA label maps: ``.pbtxt`` text protos -> LabelMap, and keras-retinanet's classes CSV.

Both official forms are read by one tokenizer-based parser:
``label { name: "..." label_id: 1 label_type: PERSON_MOVEMENT }`` (the 80-class file) and
``item { name: "..." id: 1 }`` (the 60-class evaluation file).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ava_keyframes.textio import read_bounded

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f\v]+)
      | (?P<newline>\n)
      | (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*|[-+]?[0-9][0-9A-Za-z_.+-]*)
      | (?P<punct>[{}<>:;,\[\]])""",
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_ID_FIELDS = ("label_id", "id")
INT32_MAX = 2**31 - 1
"""Largest class id, timestamp and person id: datasets and models store them as int32."""
_CLOSING = {"{": "}", "<": ">"}
MAX_LABELMAP_BYTES = 2**20  # the official maps are under 7 kB


class LabelMapError(ValueError):
    """A malformed label map; the message names the file and line."""


@dataclass(frozen=True)
class LabelMap:
    """Classes in file order: AVA action ids, their names and (for the 80-class map) types."""

    ids: list[int]
    names: list[str]
    types: list[str | None]
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {i: k for k, i in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, action_id: object) -> bool:
        return action_id in self._index

    def index_of(self, action_id: int) -> int:
        """0-based position of ``action_id`` (the class index a model uses)."""
        return self._index[action_id]

    def id_of(self, index: int) -> int:
        return self.ids[index]

    def name_of(self, action_id: int) -> str:
        return self.names[self._index[action_id]]

    def to_json(self) -> list[dict]:
        return [
            {"id": i, "name": n, "type": t}
            for i, n, t in zip(self.ids, self.names, self.types, strict=True)
        ]


def _unescape(text: str) -> str:
    def replace(match: re.Match) -> str:
        code = match.group(1)
        if code[0] == "x":
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPE.sub(replace, text)


def _tokens(text: str, path: Path) -> list[tuple[str, str, int]]:
    """(kind, value, line) for every meaningful token; strings come back unquoted."""
    tokens, line, pos = [], 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise LabelMapError(f"{path}:{line}: unexpected character {text[pos]!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            tokens.append(("string", _unescape(value[1:-1]), line))
        elif kind in ("word", "punct"):
            tokens.append((kind, value, line))
        pos = match.end()
    return tokens


def _parse_blocks(tokens: list[tuple[str, str, int]], path: Path) -> list[tuple[int, dict]]:
    """Top-level ``name { key: value ... }`` blocks as (line, {key: (value, line)})."""
    blocks, pos = [], 0

    def expect(kinds: tuple[str, ...], what: str) -> tuple[str, str, int]:
        nonlocal pos
        if pos >= len(tokens):
            last_line = tokens[-1][2] if tokens else 1
            raise LabelMapError(f"{path}:{last_line}: unexpected end of file, expected {what}")
        token = tokens[pos]
        if token[0] not in kinds and token[1] not in kinds:
            raise LabelMapError(f"{path}:{token[2]}: expected {what}, found {token[1]!r}")
        pos += 1
        return token

    while pos < len(tokens):
        _, _, line = expect(("word",), "'label' or 'item'")
        if pos < len(tokens) and tokens[pos][1] == ":":
            pos += 1
        _, opener, _ = expect(("{", "<"), "'{'")
        fields: dict[str, tuple[str, int]] = {}
        while True:
            if pos >= len(tokens):
                raise LabelMapError(f"{path}:{line}: block opened here is never closed")
            if tokens[pos][1] == _CLOSING[opener]:
                pos += 1
                break
            _, key, key_line = expect(("word",), "a field name")
            expect((":",), "':'")
            kind, value, value_line = expect(("word", "string"), f"a value for {key!r}")
            if key in fields:
                raise LabelMapError(f"{path}:{key_line}: field {key!r} repeated in one block")
            fields[key] = (value, value_line)
            if pos < len(tokens) and tokens[pos][1] in (";", ","):
                pos += 1
        blocks.append((line, fields))
    return blocks


def read_labelmap(path: str | Path) -> LabelMap:
    """Parse an AVA label map ``.pbtxt`` (``label {...}`` or ``item {...}`` form)."""
    path = Path(path)
    text = read_bounded(path, MAX_LABELMAP_BYTES, "an AVA label map", LabelMapError,
                        MAX_LABELMAP_BYTES)
    ids, names, types = [], [], []
    seen: dict[int, int] = {}
    for line, fields in _parse_blocks(_tokens(text, path), path):
        id_field = next((f for f in _ID_FIELDS if f in fields), None)
        if id_field is None:
            raise LabelMapError(f"{path}:{line}: field 'id': missing (no 'label_id' or 'id')")
        raw_id, id_line = fields[id_field]
        try:
            action_id = int(raw_id)
        except ValueError:
            raise LabelMapError(
                f"{path}:{id_line}: field {id_field!r}: {raw_id!r} is not an integer"
            ) from None
        if not -INT32_MAX - 1 <= action_id <= INT32_MAX:
            raise LabelMapError(
                f"{path}:{id_line}: field {id_field!r}: {raw_id} outside the int32 range"
            )
        if action_id in seen:
            raise LabelMapError(
                f"{path}:{id_line}: field {id_field!r}: duplicate id {action_id} "
                f"(first on line {seen[action_id]})"
            )
        if "name" not in fields:
            raise LabelMapError(f"{path}:{line}: field 'name': missing")
        seen[action_id] = id_line
        ids.append(action_id)
        names.append(fields["name"][0])
        types.append(fields["label_type"][0] if "label_type" in fields else None)
    if not ids:
        raise LabelMapError(f"{path}:1: no 'label' or 'item' blocks: not an AVA label map")
    return LabelMap(ids, names, types)


def write_classes_csv(labelmap: LabelMap, path: str | Path) -> None:
    """keras-retinanet's classes CSV: ``name,index`` with 0-based indices in label-map order."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for index, name in enumerate(labelmap.names):
            writer.writerow([name, index])


def _bundled(name: str) -> Path:
    return Path(str(resources.files("ava_keyframes") / "data" / name))


def default_labelmap_path() -> Path:
    """The bundled official 80-class AVA v2.2 label map."""
    return _bundled("ava_action_list_v2.2.pbtxt")


def evaluation_labelmap_path() -> Path:
    """The bundled 60-class map that the official frame-mAP evaluates."""
    return _bundled("ava_action_list_v2.2_for_activitynet_2019.pbtxt")
