"""Files a user hands in, and files a command writes: the rules every tool shares.

- JSON (manifests, `pretrained.json`, `engines.json`) is read by `read_json`: at most
  `MAX_JSON_BYTES` bytes and `MAX_JSON_DEPTH` levels of nesting, UTF-8, each failure an error of
  the caller's class naming the file and the fix (never a JSONDecodeError or RecursionError).
- A path a manifest names is resolved by `contained`: relative, POSIX separators, and inside the
  folder it belongs to after symlinks are followed; anything else is refused naming the path.
  Nothing outside is opened (not even to hash it).
- An output path is checked by `check_output` before the work: it must not resolve to one of the
  command's inputs (same path after symlinks, or the same file by hard link) and must not lie
  inside a folder the command reads (a bundle, a checkpoint); a folder that is written whole
  (a repository, a bundle, a run folder) must not contain one either.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .errors import InputError

MAX_JSON_BYTES = 4 * 1024 * 1024  # a real manifest is 25-35 KB
MAX_JSON_DEPTH = 64  # a real manifest nests 7 levels


def json_depth(value) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return depth


def parse_json(data: bytes, where: str, error=ValueError, hint: str = "", *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH):
    """Bytes -> a JSON value, or `error` naming `where`, what is wrong and `hint`."""
    tail = f"; {hint}" if hint else ""
    if len(data) > max_bytes:
        raise error(f"{where} is {len(data)} bytes or more, over the limit of {max_bytes} for this file{tail}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text (byte {exc.start}){tail}") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} is nested too deeply to be read (more than {max_depth} levels){tail}") from None
    except ValueError as exc:  # JSONDecodeError
        raise error(f"{where} is not valid JSON ({exc}){tail}") from None
    depth = json_depth(value)
    if depth > max_depth:
        raise error(f"{where} is nested {depth} levels deep, over the limit of {max_depth}{tail}")
    return value


def read_json(path: Path, error=ValueError, hint: str = "", *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH):
    """A JSON file under the size and depth limits, or `error` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}" + (f"; {hint}" if hint else "")) from None
    return parse_json(data, str(path), error, hint, max_bytes=max_bytes, max_depth=max_depth)


# --------------------------------------------------------------------------- paths a manifest names


def is_inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or below it (both taken as given: resolve them first)."""
    return path == folder or folder in path.parents


def path_parts(rel, where: str, error=ValueError, *, allow_up: bool = False) -> list[str]:
    """A manifest's file name -> its parts: a non-empty relative POSIX path without '.', empty
    parts, backslashes or NUL; '..' only where `allow_up` (leading parts only)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        raise error(f"{where}: file name {rel!r} must be a relative path inside the bundle folder, with '/' separators")
    parts = rel.split("/")
    if any(p in ("", ".") for p in parts):
        raise error(f"{where}: file name {rel!r} has an empty or '.' part; write it as a plain relative path")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:] or (ups and not allow_up) or ups == len(parts):
        raise error(f"{where}: file name {rel!r} leaves the bundle folder ('..'); every file a manifest names must "
                    f"lie inside the bundle")
    return parts


def contained(folder: Path, rel, where: str, error=ValueError, *, root: Path | None = None) -> Path:
    """`folder / rel` resolved (symlinks followed), refused unless it lies inside `root` (default
    `folder`). '..' parts are allowed only when `root` is given (and still must stay inside it)."""
    parts = path_parts(rel, where, error, allow_up=root is not None)
    base = Path(os.path.realpath(folder))
    limit = Path(os.path.realpath(root)) if root is not None else base
    path = Path(os.path.realpath(base.joinpath(*parts)))
    if not is_inside(path, limit) or path == limit:
        raise error(f"{where}: {rel!r} resolves to {path}, outside {limit}; a manifest may name only files inside "
                    f"its bundle (a symlink out of the bundle counts as outside)")
    return path


# --------------------------------------------------------------------------- outputs


def same_file(a: Path, b: Path) -> bool:
    """`a` and `b` name the same file: the same path after symlinks, or the same inode (a hard link)."""
    if Path(os.path.realpath(a)) == Path(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(flag: str, path: Path, *, inputs: Iterable[tuple[str, Path]] = (),
                 folders: Iterable[tuple[str, Path]] = (), folder_output: bool = False) -> None:
    """Refuse an output `path` that resolves to an input file of the same command (`inputs`:
    (flag, path) pairs), lies inside a folder the command reads (`folders`: a bundle, a
    checkpoint), or, for a folder written whole (`folder_output`), contains such a folder."""
    out = Path(os.path.realpath(path))
    for what, src in inputs:
        if not src:
            continue
        if same_file(path, Path(src)):
            raise InputError(f"{flag} {path} is the same file as {what} {src}: writing it would replace the "
                             f"input; choose another {flag}")
    for what, folder in folders:
        if not folder:
            continue
        real = Path(os.path.realpath(folder))
        if is_inside(out, real):
            raise InputError(f"{flag} {path} lies inside {what} {folder}, which this command reads; writing there "
                             f"would change it: choose a {flag} outside it")
        if folder_output and out in real.parents:
            raise InputError(f"{flag} {path} contains {what} {folder}, which this command reads; writing {flag} "
                             f"would replace it: choose a {flag} beside it, not around it")
