"""The subset of protobuf's text format that Triton's `config.pbtxt` files use: write and read.

A config is a plain dict, fields in the order they are written:

    {"name": "decoder", "max_batch_size": 0,
     "input": [{"name": "x", "data_type": Enum("TYPE_FP32"), "dims": [-1, 4, 8, 8]}],
     "instance_group": [{"count": 1, "kind": Enum("KIND_AUTO")}],
     "dynamic_batching": {}}

- a dict is a message (`field { ... }`), a list of dicts a repeated message (`field [ {...}, {...} ]`,
  map fields such as `parameters` included: a list of {"key": ..., "value": {...}});
- a list of scalars is a repeated scalar (`dims: [ -1, 4 ]`);
- `Enum` values (data types, instance kinds) are written bare, `str` values quoted, bools as
  true/false, ints and floats as numbers.

`loads` reads that subset back (and also the `field: value` / repeated-field-by-repetition spellings
Triton's own examples use), so tests can check what `dumps` wrote without protobuf. With Triton's
`model_config.proto` at hand (the `tritonclient` package ships it as `model_config_pb2`),
`google.protobuf.text_format.Parse` reads the same files.
"""
from __future__ import annotations

import re


class Enum(str):
    """An enum value such as TYPE_FP32 or KIND_GPU: written without quotes."""

    def __repr__(self) -> str:
        return f"Enum({str(self)!r})"


# --------------------------------------------------------------------------- writing

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)  # UTF-8 passes through, as the text format allows
    return '"' + "".join(out) + '"'


def _scalar(value) -> str:
    if isinstance(value, Enum):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"enum value {value!r} is not an identifier")
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a pbtxt scalar")


def _message(fields: dict, depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for key, value in fields.items():
        if isinstance(value, dict):
            if value:
                lines += [f"{pad}{key} {{", *_message(value, depth + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key} {{ }}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                lines += [f"{pad}  {{", *_message(item, depth + 2), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]" if value else f"{pad}{key}: [ ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def dumps(config: dict) -> str:
    """A config dict (see the module doc) as config.pbtxt text."""
    return "\n".join(_message(config, 0)) + "\n"


# --------------------------------------------------------------------------- reading

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]:,;<>])
""", re.VERBOSE)

_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


def _unquote(token: str) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group(0)
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        else:
            out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise ValueError(f"pbtxt line {line}: cannot read {text[pos:pos + 20]!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group(), text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


class _Reader:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "", -1)

    def take(self, want: str | None = None):
        tok = self.peek()
        if tok[0] == "end" or (want is not None and tok[1] != want):
            raise ValueError(f"pbtxt line {tok[2]}: expected {want or 'a token'!r}, found {tok[1] or 'the end'!r}")
        self.i += 1
        return tok

    def message(self, close: str | None, opened: int = 0) -> dict:
        fields: dict = {}
        while True:
            kind, text, line = self.peek()
            if close is not None and text == close:
                self.take()
                return fields
            if kind == "end":
                if close is not None:
                    raise ValueError(f"pbtxt line {opened}: this message is never closed with {close!r}")
                return fields
            if kind != "ident":
                raise ValueError(f"pbtxt line {line}: expected a field name, found {text!r}")
            self.take()
            if self.peek()[1] == ":":
                self.take()
            value = self.value()
            if text in fields:  # a repeated field written by repetition
                prev = fields[text]
                fields[text] = (prev if isinstance(prev, list) else [prev]) + (value if isinstance(value, list) else [value])
            else:
                fields[text] = value
            if self.peek()[1] in (",", ";"):
                self.take()

    def value(self):
        kind, text, line = self.peek()
        if text in ("{", "<"):
            self.take()
            return self.message("}" if text == "{" else ">", line)
        if text == "[":
            self.take()
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return items
        self.take()
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "ident":
            return {"true": True, "false": False}.get(text, Enum(text))
        raise ValueError(f"pbtxt line {line}: expected a value, found {text!r}")


def loads(text: str) -> dict:
    """config.pbtxt text -> dict (see the module doc). Raises ValueError naming the line."""
    return _Reader(text).message(None)
