"""`examples/livekit_agent.py sip`: without the LLM settings it explains what to set and exits
non-zero, before it answers any call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "examples" / "livekit_agent.py"


def run_example(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_example_sip_mode_without_llm_settings_says_what_to_set() -> None:
    done = run_example("sip", "--port", "5070", "--human", "sip:alice@127.0.0.1")
    assert done.returncode == 2
    assert "OPENAI_API_KEY" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_example_sip_mode_needs_the_human() -> None:
    done = run_example("sip", "--port", "5070")
    assert done.returncode == 2
    assert "--human" in done.stderr
