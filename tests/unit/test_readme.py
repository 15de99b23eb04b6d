"""The README's examples are code a new user will paste: they must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from warmtransfer.transfer.plan import MessageAndHangup, TransferPlan

README = Path(__file__).parents[2] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_plan_file_loads(tmp_path: Path) -> None:
    (toml,) = blocks("toml")
    path = tmp_path / "plan.toml"
    path.write_text(toml)
    plan = TransferPlan.from_file(path)
    assert [t.uri for t in plan.targets] == ["sip:alice@pbx.example.com", "sip:bob@pbx.example.com"]
    assert plan.hunting.mode == "simultaneous"
    assert isinstance(plan.on_failure, MessageAndHangup)
    plan.check_allowed()


def test_readme_python_example_builds_its_plan() -> None:
    (python,) = blocks("python")
    setup = python.split("async def main")[0]  # imports and the plan, not the server loop
    namespace: dict[str, object] = {}
    exec(compile(setup, "README.md", "exec"), namespace)
    plan = namespace["PLAN"]
    assert isinstance(plan, TransferPlan)
    plan.check_allowed()
