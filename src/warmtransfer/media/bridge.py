"""Joins two legs' media: each leg's packets go out on the other as they arrive.

No mixing and no pacing: the far ends already pace their packets, so forwarding on arrival adds
no delay and, when both legs use the same codec, no decode either (DESIGN.md's CPU budget).
"""

from __future__ import annotations

from warmtransfer.media.session import RtpSession


class MediaBridge:
    def __init__(self, a: RtpSession, b: RtpSession) -> None:
        self.a = a
        self.b = b
        self.active = False

    def start(self) -> None:
        for leg in (self.a, self.b):
            leg.stop_playback()
        self.a.forward_to = self.b
        self.b.forward_to = self.a
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return  # stopped already: the legs may be in a newer bridge by now, even each other's
        if self.a.forward_to is self.b:
            self.a.forward_to = None
        if self.b.forward_to is self.a:
            self.b.forward_to = None
        self.active = False

    @property
    def passthrough(self) -> bool:
        fa, fb = self.a.format, self.b.format
        return fa is not None and fb is not None and fa.codec == fb.codec
