"""Reading a YAML config file (pipeline or training) as plain data, whatever the file holds.

`yaml.safe_load` never runs code, but it still lets a file of a few hundred bytes
expand to gigabytes through nested aliases (a "billion laughs"), keeps the last of
two equal keys without a word, and builds values no config key takes (dates,
bytes, sets). `load_config_yaml` refuses all of these with one line naming the
file and the line, before anything is built:

- aliases: the document, with every alias expanded, may hold at most
  `MAX_NODES` nodes (the biggest shipped config holds a few hundred), and may
  not contain itself;
- a key given twice in one mapping;
- ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs`` (what a config has no use for);
- a date (``seed: 2020-01-01``) stays the string it was written as, so the key
  it was given to says what it expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from pvtbuild.errors import ConfigError

MAX_NODES = 100_000  # nodes of a config document once its aliases are expanded


class _ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys and the tags a config never needs."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """As SafeLoader's, but a key given twice in the mapping is an error at its line."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConstructorError(None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _refuse(loader: _ConfigLoader, node: Node) -> Any:
    raise ConstructorError(None, None, f"{node.tag.rsplit(':', 1)[-1]} values are not config data",
                           node.start_mark)


def _as_written(loader: _ConfigLoader, node: Node) -> str:
    return str(node.value)


for _tag in ("binary", "set", "omap", "pairs"):
    _ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse)
_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_written)


def load_config_yaml(path: Path) -> Any:
    """The data of the YAML file at `path` (None when empty); `ConfigError` naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{path}: not a config: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: Node, path: Path) -> None:
    """Raise `ConfigError` when `root`, its aliases expanded, exceeds `MAX_NODES` nodes or contains itself.

    Counts each distinct node once (memoised), so a bomb is measured without being expanded.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{path}: not a config (line {node.start_mark.line + 1}): an alias refers to a "
                              "node that contains it")
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > MAX_NODES:
            raise ConfigError(f"{path}: not a config: its aliases expand it past {MAX_NODES} values "
                              "(a YAML bomb, or far too big)")
        sizes[key] = total
        return total

    size(root)
