"""The CLI spells its option choices out, because parsing must not import the runtime package (~0.3 s on
every command) or gguf; these tests keep each list equal to the table the code acts on."""

from __future__ import annotations

import argparse

import pytest

from bitdistill.cli import bench, export, pack
from bitdistill.export.gguf_blocks import HEAD_TYPES, TERNARY_TYPES
from bitdistill.runtime.dense_dtypes import DENSE_DTYPES


def _choices(module, command: str, option: str) -> set[str]:
    sub = argparse.ArgumentParser().add_subparsers()
    module.register(sub)
    return set(sub.choices[command]._option_string_actions[option].choices)


@pytest.mark.parametrize(
    "module, command, option",
    [(pack, "pack", "--head-dtype"), (pack, "pack", "--embed-dtype"), (bench, "bench", "--head-dtype")],
)
def test_cli_offers_exactly_the_packed_dtypes(module, command, option):
    assert _choices(module, command, option) == set(DENSE_DTYPES)


def test_export_cli_offers_the_exporters_types():
    assert _choices(export, "export", "--type") == set(TERNARY_TYPES) - {"f16"}  # f16: API-only diagnostics
    assert _choices(export, "export", "--head") == set(HEAD_TYPES)
