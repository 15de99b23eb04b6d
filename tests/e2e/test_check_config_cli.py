"""`warmtransfer check-config`, run as an operator runs it: a real process, exit 0 and a summary
for a usable file, exit 2 and located errors for a broken one, never a secret's value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "hunter2-RECOGNISABLE-s3cret-value-0123456789"


def check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "200", **env}
    return subprocess.run(
        [sys.executable, "-m", "warmtransfer", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_the_trunk_example_passes_with_a_summary() -> None:
    result = check_config(
        EXAMPLES / "warmtransfer.toml",
        WARMTRANSFER_TRUNK_PASSWORD=SECRET,
        WARMTRANSFER_WEBHOOK_SECRET=SECRET,
        WARMTRANSFER_API_TOKEN=SECRET,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "udp" in out and "0.0.0.0:5060" in out
    assert "acme-ai registers at sip:sip.carrier.example.com" in out
    assert "support" in out and "Alice (support), Bob (support)" in out
    assert "narrowed to tel:+14155550*" in out
    assert "trunk.password" in out and "env WARMTRANSFER_TRUNK_PASSWORD" in out
    assert "http.token" in out and "env WARMTRANSFER_API_TOKEN" in out
    assert f"{EXAMPLES / 'warmtransfer.toml'}: OK" in out
    assert SECRET not in out + result.stderr


def test_a_broken_file_exits_2_naming_file_line_key_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "warmtransfer.toml"
    path.write_text(
        "[sip]\n"
        'listen = [{ transport = "ws", port = 5060 }]\n'
        "\n"
        "[trunk]\n"
        'registrar = "sip:sip.example.com"\n'
        'username = "u"\n'
        'password = "${TRUNK_PW}"\n'
        'pasword = "${TRUNK_PW}"\n'
    )
    result = check_config(path, TRUNK_PW=SECRET)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}:2: sip.listen[0].transport: 'ws' is not supported; use udp, tcp or tls",
        f"error: {path}:8: trunk.pasword: unknown key; did you mean 'password'?",
    ]
    assert SECRET not in result.stderr


def test_a_missing_environment_variable_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "warmtransfer.toml"
    path.write_text('[http]\ntoken = "${NOT_SET_ANYWHERE_42}"\n')
    env = {k: v for k, v in os.environ.items() if k != "NOT_SET_ANYWHERE_42"}
    result = subprocess.run(
        [sys.executable, "-m", "warmtransfer", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}:2: http.token: environment variable NOT_SET_ANYWHERE_42 is not set" in (
        result.stderr
    )
