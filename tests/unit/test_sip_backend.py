"""How the SIP backend turns SIP outcomes into the reasons an app acts on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmtransfer.backends.sip import reason_for_status
from warmtransfer.transfer.outcome import Reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (486, Reason.BUSY),
        (600, Reason.BUSY),
        (603, Reason.DECLINED),
        (480, Reason.NO_ANSWER),
        (487, Reason.NO_ANSWER),
        (404, Reason.UNREACHABLE),
        (408, Reason.UNREACHABLE),
        (503, Reason.UNREACHABLE),
        (None, Reason.UNREACHABLE),
        (403, Reason.REJECTED),
        (488, Reason.REJECTED),
        (500, Reason.REJECTED),
    ],
)
def test_final_status_maps_to_a_reason(status: int | None, reason: Reason) -> None:
    assert reason_for_status(status) is reason


def test_our_own_ring_timeout_is_no_answer_whatever_the_status() -> None:
    assert reason_for_status(487, ring_timeout=True) is Reason.NO_ANSWER


def test_importing_the_package_is_cheap_and_exports_what_the_readme_uses() -> None:
    code = (
        "import sys, warmtransfer;"
        "assert 'numpy' not in sys.modules and 'warmtransfer.sip' not in sys.modules;"
        "from warmtransfer import AllowList, Briefing, Engine, Target, TransferPlan, Reason;"
        "assert set(warmtransfer.__all__) - {'__version__'} == set(warmtransfer._EXPORTS)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
