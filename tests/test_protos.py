"""The committed stubs are exactly what protoc makes of the committed .proto files."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "protos"))

import regen  # noqa: E402


def test_stubs_match_the_protos(tmp_path):
    regen.generate(tmp_path)
    committed = ROOT / "protos" / "apex" / "v1"
    generated = tmp_path / "apex" / "v1"
    names = sorted(p.name for p in generated.iterdir())
    assert names, "protoc produced nothing"
    assert sorted(p.name for p in committed.glob("*_pb2*")) == names
    stale = [n for n in names if not filecmp.cmp(generated / n, committed / n, shallow=False)]
    assert not stale, f"stubs out of date, run `python protos/regen.py`: {stale}"
