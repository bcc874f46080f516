"""Reading a study file's YAML safely: bounded size and expansion, no duplicate keys, UTF-8.

`yaml.safe_load` constructs only plain data, but it still accepts what a hostile or mistaken file
can do to a program that then walks, prints or stores the data:

- an alias bomb ("billion laughs"): nine anchors of ten aliases each parse in microseconds
  into a value of 10^9 leaves that any `repr`, `yaml.safe_dump` or MLflow param walks forever;
- a recursive alias (`a: &x [*x]`), whose walk never ends;
- a duplicate key, which silently wins over the first;
- bytes that are not UTF-8, which `Path.read_text()` raises as a traceback;
- a control character (NUL, 0x01, DEL, ...), which PyYAML's reader raises as a traceback;
- a path that is not a regular file: reading a named pipe (FIFO) waits for a writer forever.

`load_yaml` composes the node graph (aliases are shared nodes there, so composing is cheap),
counts the nodes the document expands to (each alias counted as the whole subtree it names,
memoised per node, so the count of a bomb is quick), and refuses more than `MAX_NODES` before
constructing anything. Every problem is a `YamlProblem`: one line with the line and column.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from autoall.errors import InvalidValue

MAX_BYTES = 1 << 20  # a study file is a few KB; 1 MiB is generous
MAX_NODES = 10_000  # values after expanding aliases; a full study file has ~100
_MERGE = "tag:yaml.org,2002:merge"


class YamlProblem(InvalidValue):
    """A study file that cannot be read as plain, bounded YAML; `key` is the dotted key path
    where known ("" otherwise)."""

    def __init__(self, message: str, *, key: str = "") -> None:
        self.key = key
        super().__init__(message)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` excepted:
    an explicit key overriding a merged one is YAML's meaning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor says so below
                continue
            if first is not None:
                raise YamlProblem(
                    f"duplicate key {_short(key)} (line {key_node.start_mark.line + 1}; "
                    f"first at line {first.line + 1}); give each key once.",
                    key=str(key),
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path) -> str:
    """The file as UTF-8 text, at most `MAX_BYTES`; every problem is one `YamlProblem` line.

    Only a regular file (or a symlink to one) is read: a folder, a named pipe, a device or a
    socket is refused without waiting on it (the file is opened non-blocking and checked
    once it is open, so swapping it for a pipe meanwhile does not block either)."""
    try:
        _check_regular(path.stat().st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            _check_regular(os.fstat(handle.fileno()).st_mode)
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise YamlProblem("no such study file.") from None
    except OSError as exc:
        raise YamlProblem(f"cannot be read: {exc.strerror or exc}.") from None
    if len(data) > MAX_BYTES:
        raise YamlProblem(
            f"is larger than {MAX_BYTES // 1024} KiB; a study file is a few KB of YAML."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlProblem(
            f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}; save it as UTF-8."
        ) from None


_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}  # fmt: skip


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise YamlProblem("is a folder, not a study file.")
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise YamlProblem(f"is {kind}, not a study file; give the path of a YAML file.")


def check_printable(text: str) -> None:
    """Refuse the first character YAML does not allow (a control character such as NUL, 0x01
    or DEL, or U+FFFE; tabs and line breaks are fine), naming its line and column."""
    found = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if found is None:
        return
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    what = "control character" if unicodedata.category(found.group()) == "Cc" else "character"
    raise YamlProblem(
        f"holds the {what} U+{ord(found.group()):04X} at line {line}, column {column}, which "
        "YAML does not allow; a study file is plain text (tabs and line breaks only): remove it."
    )


def load_yaml(text: str) -> Any:
    """The one YAML document in `text` as plain data, bounded by `MAX_NODES` expanded values;
    a control character is refused first (`check_printable`)."""
    check_printable(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count = _expanded_size(node)
        if count > MAX_NODES:
            raise YamlProblem(
                f"expands to more than {MAX_NODES:,} values (through YAML aliases '*'); a study "
                "file needs a few hundred at most."
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(f"is not valid YAML: {_one_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise YamlProblem("is not valid YAML: it nests too deeply.") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded; more than MAX_NODES + 1 is not counted
    exactly. A node that contains itself (a recursive alias) is a YamlProblem."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            mark = node.start_mark
            raise YamlProblem(
                f"holds a recursive alias (a value that contains itself, line {mark.line + 1}); "
                "a study file cannot use one."
            )
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _one_line(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "syntax error"
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    context = f", {exc.context}" if exc.context and exc.problem else ""
    return f"{what}{context}{where}."


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
