from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from orbitvault import allocator; print(allocator.tune())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_on_glibc_unless_the_environment_says_otherwise() -> None:
    def run(env: dict[str, str]) -> str:
        return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True).stdout.strip()

    assert run({}) == "True"
    assert run({"MALLOC_TOP_PAD_": "0", "MALLOC_ARENA_MAX": "8"}) == "False"  # the operator's choice wins
