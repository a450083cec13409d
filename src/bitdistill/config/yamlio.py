"""YAML reading for recipes: PyYAML's safe loader, except that a key repeated in one mapping is an error.

PyYAML keeps the last of two equal keys silently, so `lr: 3e-4` ... `lr: 1e-3` further down the same
section trains with 1e-3 while the reader of the file sees 3e-4 first. A recipe is the record of a run;
it must mean one thing.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import BitDistillError


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first}); keep one of them")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a repeated key (merge keys `<<` excepted: YAML allows those)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader itself reports it below
                continue
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`; errors (duplicate keys included) are one line naming `source`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as err:
        raise BitDistillError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise BitDistillError(f"{source}: not valid YAML ({detail})") from None


__all__ = ["load_yaml"]
