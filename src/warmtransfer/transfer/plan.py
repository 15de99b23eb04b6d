"""A transfer plan: whom to dial and under which rules. Pydantic, so it loads from TOML/JSON."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from warmtransfer.media.wav import read_wav
from warmtransfer.transfer.target import AllowList, Target


class HoldAudio(BaseModel):
    """What the caller hears while held: the built-in music, a WAV file, or silence."""

    model_config = ConfigDict(frozen=True)

    source: Path | None = Field(default=None, description="WAV file; None = built-in music")
    silence: bool = Field(default=False, description="hold in silence instead of music")
    volume: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("source")
    @classmethod
    def _readable_wav(cls, value: Path | None) -> Path | None:
        """A bad hold file is refused when the plan is made, not when a caller is waiting."""
        if value is not None:
            read_wav(value)  # raises AudioFormatError naming the file and what is accepted
        return value


class TransferPlan(BaseModel):
    """One target for now; hunting over several is built on this (see the transfer core issue)."""

    model_config = ConfigDict(frozen=True)

    target: Target
    allow: AllowList = Field(default_factory=AllowList)
    hold_audio: HoldAudio = Field(default_factory=HoldAudio)
    consult_timeout: float = Field(
        default=60.0, gt=0, description="seconds the human has to decide"
    )
