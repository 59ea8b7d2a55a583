"""The Node.js client (@grpc/grpc-js) against the running stack: stream, abort, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.factories import hf_greedy

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="Node.js is not installed"
)
def test_node_client_streams_and_aborts(tiny_stack, models):
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
    prompt = [0, 12, 345, 67, 89]
    expected = {
        "prompt": prompt,
        "max_tokens": 20,
        "token_ids": hf_greedy(models["tiny"], prompt, 20),
    }
    env = dict(os.environ, APEX_ADDRESS=tiny_stack.address, APEX_EXPECTED=json.dumps(expected))
    r = subprocess.run(
        ["node", "--test", "test/"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# pass 3" in r.stdout and "# fail 0" in r.stdout, r.stdout
