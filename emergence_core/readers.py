"""One guarded reader per format emerge reads: JSON, YAML, a Parquet part, a SQLite store.

Each turns a damaged or wrong-shaped file (zero bytes, cut short, the wrong type at the top,
the wrong encoding, a YAML key given twice) into one ``UnreadableFile`` line naming the file,
what is wrong with it and what to do; every command reads such files through here, so no
damaged file is ever a traceback. Nothing is imported at module level but the standard
library: a reader of JSON does not load pyarrow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["UnreadableFile", "check_parquet", "check_sqlite", "decode_text", "load_yaml",
           "read_json", "read_parquet", "read_text", "read_yaml"]

_TYPES = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "a number",
          float: "a number", bool: "true or false", type(None): "null"}
_YAML_TYPES = {dict: "a mapping", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "nothing (null)"}
SQLITE_HEADER = b"SQLite format 3\x00"


class UnreadableFile(ValueError):
    """A file emerge cannot use as it is; the message is one line: the file, what is wrong,
    what to do."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path, self.problem, self.fix = Path(path), problem, fix


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def decode_text(data: bytes, path: str | Path, fix: str) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte-order mark is allowed); UTF-16/32 or bytes that
    are not UTF-8 are one line saying how to save the file."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) > 1 and b"\x00" in data[:64]):
        raise UnreadableFile(path, "UTF-16 (or UTF-32) text, not UTF-8",
                             "save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UnreadableFile(path, f"not UTF-8 text (byte 0x{data[err.start]:02x} at "
                                   f"offset {err.start})", f"save it as UTF-8; {fix}") from None


def read_text(path: str | Path, fix: str, *, what: str = "file") -> str:
    """A text file's contents; a missing, unreadable or undecodable one is one line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnreadableFile(path, f"missing (no such {what})", fix) from None
    except IsADirectoryError:
        raise UnreadableFile(path, f"a folder, not a {what}", fix) from None
    except OSError as err:
        raise UnreadableFile(path, f"cannot be read ({err.strerror or _first(err)})",
                             fix) from None
    return decode_text(data, path, fix)


def read_json(path: str | Path, fix: str, *, expect: type | tuple[type, ...] = dict) -> Any:
    """A JSON file holding a value of type ``expect`` (an object by default)."""
    import json

    path = Path(path)
    text = read_text(path, fix)
    if not text.strip():
        raise UnreadableFile(path, f"empty ({len(text)} bytes: cut short when it was "
                                   "written?)", fix)
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UnreadableFile(path, f"not valid JSON ({_first(err)}; cut short?)",
                             fix) from None
    if not isinstance(value, expect):
        wanted = expect if isinstance(expect, tuple) else (expect,)
        raise UnreadableFile(
            path, f"holds {_TYPES.get(type(value), type(value).__name__)}, expected "
                  f"{' or '.join(_TYPES.get(t, t.__name__) for t in wanted)}", fix)
    return value


# -- YAML ----------------------------------------------------------------------------------

def _loader() -> type:
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the
    last silently) and a key that is not a string at the top of the file."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first at line "
                                    f"{first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_yaml(text: str, path: str | Path, fix: str) -> Any:
    """Parsed YAML text read from ``path``: invalid YAML, a key given twice, or a top-level
    key that is not a string is one line naming the line."""
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or _first(e)
        raise UnreadableFile(path, f"invalid YAML{where}: {problem}", fix) from None
    if isinstance(data, dict):
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise UnreadableFile(path, f"a top-level key is not a name: {bad[0]!r} "
                                       f"({_YAML_TYPES.get(type(bad[0]), type(bad[0]).__name__)})",
                                 "top-level keys are field names; quote it or remove it")
    return data


def read_yaml(path: str | Path, fix: str, *, what: str = "file") -> Any:
    """A YAML file, parsed (see ``load_yaml``)."""
    return load_yaml(read_text(path, fix, what=what), path, fix)


# -- Parquet and SQLite ----------------------------------------------------------------------

def check_parquet(path: str | Path, fix: str) -> None:
    """Raise UnreadableFile unless ``path`` is a whole Parquet file (its footer reads)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UnreadableFile(path, f"cannot be read ({err.strerror or _first(err)})",
                             fix) from None
    if size == 0:
        raise UnreadableFile(path, "empty (0 bytes: cut short when it was written?)", fix)
    try:
        pq.read_metadata(path)
    except Exception as err:  # truncated, zeroed, not Parquet at all: arrow says which
        raise UnreadableFile(path, f"not a readable Parquet file ({_first(err)})",
                             fix) from None


def read_parquet(path: str | Path, fix: str, schema: Any = None) -> Any:
    """A Parquet file as an Arrow table (cast to ``schema``); a damaged one is one line."""
    import pyarrow.parquet as pq

    check_parquet(path, fix)
    try:
        return pq.read_table(path, schema=schema)
    except Exception as err:  # a whole footer but damaged pages, or another table's columns
        raise UnreadableFile(path, f"cannot be read as this table ({_first(err)})",
                             fix) from None


def check_sqlite(path: str | Path, fix: str) -> None:
    """Raise UnreadableFile unless ``path`` is a SQLite database (or does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise UnreadableFile(path, "a folder, not a SQLite database", fix)
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise UnreadableFile(path, f"cannot be read ({err.strerror or _first(err)})",
                             fix) from None
    if head == b"":
        raise UnreadableFile(path, "empty (0 bytes), not a SQLite database", fix)
    if head != SQLITE_HEADER:
        raise UnreadableFile(path, "not a SQLite database (its first bytes are not "
                                   "SQLite's)", fix)
