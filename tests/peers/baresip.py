"""BaresipPeer: a real baresip 1.0.0 user agent, headless, driven over its `ctrl_tcp` module.

    async with BaresipPeer.start(tmp_path, name="human", auto_answer=True,
                                 audio_wav=tone) as human:
        ...  # dial human.uri from the engine
        ev = await human.wait_event("CALL_ESTABLISHED")
        await human.send_dtmf("1")
        ...
        await human.wait_event("CALL_CLOSED")
        wav = await human.received_wav()

Every peer gets its own directory `workdir/<name>` holding its `config`, `accounts`, the padded
microphone wav, its log (`baresip.log`) and the sndfile dumps (`dump-<timestamp>-dec.wav` = what it
heard, `-enc.wav` = what it sent).

ctrl_tcp protocol (netstrings, `<len>:<json>,` in both directions):
  command  -> {"command": "dial", "params": "sip:...", "token": "7"}
  response <- {"response": true, "ok": true, "data": "...", "token": "7"}
  event    <- {"event": true, "class": "call", "type": "CALL_ESTABLISHED", "accountaor": ...,
               "direction": "incoming"|"outgoing", "peeruri": ..., "id": <SIP Call-ID>,
               "param": ...}
The harness adds "_t": seconds since the process started, to each event.

baresip 1.0.0 behaviour worth knowing (measured here):
- Events of a call: CALL_LOCAL_SDP/CALL_REMOTE_SDP (class "other", param "offer"/"answer"),
  CALL_INCOMING (only when NOT auto-answering), CALL_RINGING (outgoing, on 180),
  CALL_ESTABLISHED, CALL_RTPESTAB (first RTP received), CALL_RTCP, CALL_DTMF_START (param = the
  digit), CALL_DTMF_END (no param; not emitted for sipp's pcap DTMF), CALL_CLOSED with param =
  the reason: "Connection reset by user" (we hung up), "Connection reset by peer" (BYE received),
  "486 Busy Here" / "603 Decline" / "486 Rejected" ... (final response to our INVITE).
- Its INVITE: Contact <sip:<user>-0x<hex>@127.0.0.1:<port>>, an empty "Supported:" header,
  Allow incl. REFER; SDP c=127.0.0.1 (net_interface), m=audio <even port> RTP/AVP 0 8 101 in
  the `codecs` order, a=rtpmap:101 telephone-event/8000, a=fmtp:101 0-15, a=ptime:20,
  a=rtcp-rsize, a=ssrc. RTP/RTCP sockets bind 0.0.0.0 (not only loopback).
- Auto-answer replies "180 Ringing" then "200 Answering" (sic) at once. `hangup` on a ringing
  incoming call answers "486 Rejected"; on a ringing outgoing call it sends CANCEL.
- DTMF (`sndcode`): RFC 4733 PT 101, marker on the first packet, 9 packets with duration
  160..1440 (180 ms) then 3 end packets; one digit ~240 ms; digits are queued.
- A dial target without "sip:"/host is completed to sip:<x>@127.0.0.1 (port 5060).
- sndfile names its dumps after the wall-clock second the call's audio started: two calls of
  one peer within the same second overwrite each other's dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import struct
import time
import wave
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .ports import LOOPBACK, RTP_RANGE, free_port_pair, free_tcp_port
from .process import PeerError, PeerProcess, RunsAProcess, cancel_and_wait

__all__ = [
    "BaresipPeer",
    "PeerError",
    "read_wav_samples",
    "tone_power",
    "wav_duration",
    "wav_loudest",
    "wav_rms",
    "write_tone_wav",
]

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"
READY_LINE = "baresip is ready."
SAMPLE_RATE = 8000


# ------------------------------------------------------------------------------------------------
# small audio helpers (8 kHz mono 16-bit PCM wav files)
# ------------------------------------------------------------------------------------------------
def write_tone_wav(
    path: Path, freq: float = 440.0, seconds: float = 5.0, amplitude: float = 0.3
) -> Path:
    """Write an 8 kHz mono 16-bit sine tone."""
    n = int(seconds * SAMPLE_RATE)
    peak = int(32767 * amplitude)
    frames = struct.pack(
        f"<{n}h", *(int(peak * math.sin(2 * math.pi * freq * i / SAMPLE_RATE)) for i in range(n))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(frames)
    return path


def read_wav_samples(path: Path) -> tuple[int, list[int]]:
    """(sample rate, samples) of a mono 16-bit wav."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: need mono 16-bit PCM, got {w.getparams()}")
        data = w.readframes(w.getnframes())
        return w.getframerate(), list(struct.unpack(f"<{len(data) // 2}h", data))


def wav_rms(path: Path) -> float:
    """RMS level of a mono 16-bit wav in dBFS (-inf for digital silence / empty)."""
    _, s = read_wav_samples(path)
    if not s:
        return -math.inf
    ms = sum(x * x for x in s) / len(s)
    return -math.inf if ms == 0 else 10 * math.log10(ms / (32768.0 * 32768.0))


def wav_loudest(path: Path, window: float = 0.1) -> float:
    """dBFS of the loudest `window`-second stretch (speech has quiet parts; this finds any
    audible audio at all). -inf for digital silence."""
    rate, s = read_wav_samples(path)
    n = max(1, int(rate * window))
    best = 0.0
    for i in range(0, len(s), n):
        seg = s[i : i + n]
        best = max(best, sum(x * x for x in seg) / len(seg))
    return -math.inf if best == 0 else 10 * math.log10(best / (32768.0 * 32768.0))


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / float(w.getframerate())


def tone_power(path: Path, freq: float) -> float:
    """Fraction (0..1) of the signal's energy at `freq` (Goertzel over the whole file)."""
    rate, s = read_wav_samples(path)
    if not s:
        return 0.0
    k = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in s:
        s1, s2 = x + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    total = sum(x * x for x in s)
    return 0.0 if total == 0 else min(1.0, 2 * power / (len(s) * total))


def _prepare_microphone(src: Path | None, dst: Path, pad_to: float) -> Path:
    """Copy `src` (8 kHz mono s16 wav) to `dst`, padded with silence to at least `pad_to` s.

    baresip's aufile source ends the call when the file runs out, so the padding is what keeps the
    call up after the speech/tone."""
    frames = b""
    if src is not None:
        with wave.open(str(src), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                raise ValueError(
                    f"audio_wav {src} must be 8000 Hz mono 16-bit, is "
                    f"{w.getframerate()} Hz x{w.getnchannels()} {8 * w.getsampwidth()}-bit"
                )
            frames = w.readframes(w.getnframes())
    missing = int(pad_to * SAMPLE_RATE) - len(frames) // 2
    if missing > 0:
        frames += b"\0\0" * missing
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(frames)
    return dst


def _wav_complete(path: Path) -> bool:
    """libsndfile writes the RIFF/data sizes only when the file is closed (end of call)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    riff_size = struct.unpack("<I", head[4:8])[0]
    if riff_size + 8 != size:
        return False
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() * w.getsampwidth() * w.getnchannels() + 44 <= size
    except (wave.Error, EOFError):
        return False


# ------------------------------------------------------------------------------------------------
# netstrings
# ------------------------------------------------------------------------------------------------
def _netstring(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return str(len(body)).encode() + b":" + body + b","


async def _read_netstring(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readuntil(b":")
    n = int(head[:-1])
    body = await reader.readexactly(n + 1)
    if body[-1:] != b",":
        raise ValueError(f"bad netstring terminator {body[-1:]!r}")
    return json.loads(body[:-1])  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------
class BaresipPeer(RunsAProcess):
    """One baresip process; see module docstring."""

    def __init__(
        self,
        *,
        name: str,
        dir: Path,
        user: str,
        sip_port: int,
        ctrl_port: int,
        transport: str,
        proc: PeerProcess,
        answer_delay: float,
    ) -> None:
        self.name = name
        self.dir = dir
        self.user = user
        self.sip_port = sip_port
        self.ctrl_port = ctrl_port
        self.transport = transport
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._responses: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._token = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._answer_delay = answer_delay
        self._ctrl_error: BaseException | None = None

    # -- public properties -----------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """SIP URI that reaches this peer."""
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        port = self.sip_port + 1 if self.transport == "tls" else self.sip_port
        return f"sip:{self.user}@{LOOPBACK}:{port}{suffix}"

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{LOOPBACK}"

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        *,
        name: str = "baresip",
        sip_port: int | None = None,
        user: str = "human",
        auto_answer: bool = False,
        answer_delay: float = 0.0,
        audio_wav: Path | None = None,
        pad_audio_to: float = 120.0,
        record: bool = True,
        codecs: Sequence[str] = ("PCMU", "PCMA"),
        transport: str = "udp",
        sip_trace: bool = True,
        start_timeout: float = 10.0,
        extra_config: Iterable[str] = (),
        extra_account_params: str = "",
        tls_certificate: Path | None = None,
        tls_cafile: Path | None = None,
    ) -> AsyncIterator[BaresipPeer]:
        """Start baresip in `workdir/<name>` and yield it once it is ready to take commands.

        auto_answer: answer incoming calls (baresip sends 180 then 200 at once). With
            `answer_delay` > 0 the harness emulates a human who picks up after that many seconds
            (baresip 1.0.0 has no answer delay of its own): it rings (180) and the harness sends
            `accept` after the delay.
        audio_wav: 8 kHz mono 16-bit wav used as the microphone; padded with silence to
            `pad_audio_to` seconds because baresip hangs up when the aufile source ends. Default:
            silence.
        record: sndfile module -> `dump-*-dec.wav` (heard) / `dump-*-enc.wav` (sent) in `dir`.
        codecs: audio codecs in preference order (offer/answer order), any of PCMU, PCMA.
            telephone-event/8000 (PT 101) is always offered.
        transport: "udp", "tcp" or "tls" (`uri` and `dial` add `;transport=...`). baresip always
            listens on UDP+TCP `sip_port`, and on TLS `sip_port + 1` when it has a certificate.
        tls_certificate: PEM holding baresip's certificate and key (`sip_certificate`): needed
            to be called over TLS. tls_cafile: the CAs it trusts as a TLS client (`sip_cafile`).
        sip_trace: `-s`, every SIP message sent/received goes to the log.
        """
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        extra_config = list(extra_config)
        if tls_certificate is not None:
            extra_config.append(f"sip_certificate\t{tls_certificate}")
        if tls_cafile is not None:
            extra_config.append(f"sip_cafile\t\t{tls_cafile}")
        codec_names = [c.upper() for c in codecs]
        bad = [c for c in codec_names if c not in ("PCMU", "PCMA")]
        if bad or not codec_names:
            raise ValueError(f"codecs must be a non-empty subset of PCMU, PCMA; got {codecs}")
        peer_dir = Path(workdir) / name
        peer_dir.mkdir(parents=True, exist_ok=True)
        mic = _prepare_microphone(audio_wav, peer_dir / "microphone.wav", pad_audio_to)

        attempts = 3  # only port races ("Address already in use") are retried
        last_error: BaseException | None = None
        for attempt in range(attempts):
            port = sip_port if sip_port is not None else free_port_pair()
            ctrl_port = free_tcp_port()
            answermode = "auto" if auto_answer and answer_delay <= 0 else "manual"
            (peer_dir / "config").write_text(
                _config(port, ctrl_port, mic, peer_dir, record, extra_config)
            )
            (peer_dir / "accounts").write_text(
                f"<sip:{user}@{LOOPBACK}>;regint=0;answermode={answermode}"
                f";audio_codecs={','.join(codec_names)}{extra_account_params}\n"
            )
            argv = [BARESIP, "-f", str(peer_dir)] + (["-s"] if sip_trace else [])
            proc = PeerProcess(name, argv, peer_dir, peer_dir / f"baresip.{attempt}.log")
            peer = cls(
                name=name,
                dir=peer_dir,
                user=user,
                sip_port=port,
                ctrl_port=ctrl_port,
                transport=transport,
                proc=proc,
                answer_delay=answer_delay if auto_answer else 0.0,
            )
            try:
                await proc.start()
                try:
                    await peer._await_ready(start_timeout)
                except PeerError as e:
                    last_error = e
                    if "Address already in use" in proc.log and attempt + 1 < attempts:
                        continue  # lost a port race with someone else: new ports, new process
                    raise
                yield peer
                return
            finally:
                # SIGTERM first: baresip hangs up its calls (BYE) and closes its recordings, and
                # the ctrl reader still records those last events; then reap the helper tasks.
                await proc.stop()
                await peer._shutdown_ctrl()
        assert last_error is not None
        raise last_error

    async def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        await self.proc.wait_for_output(re.escape(READY_LINE), timeout)
        if "Populated 1 account" not in self.proc.log:
            raise self.proc.error("did not load its account (see accounts file)")
        if "ctrl_tcp: failed to listen" in self.proc.log:  # baresip carries on without it
            raise self.proc.error(f"ctrl_tcp could not listen on {self.ctrl_port}")
        # ctrl_tcp (a module_app) is listening before the ready line is printed.
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(LOOPBACK, self.ctrl_port),
                max(0.5, deadline - time.monotonic()),
            )
        except (OSError, TimeoutError) as e:
            msg = f"ctrl_tcp on {LOOPBACK}:{self.ctrl_port} not reachable: {e!r}"
            raise self.proc.error(msg) from e
        self._tasks.append(asyncio.create_task(self._read_ctrl(), name=f"{self.name}-ctrl"))
        if self._answer_delay > 0:
            self._tasks.append(
                asyncio.create_task(self._delayed_answerer(), name=f"{self.name}-answerer")
            )
        # Round trip proves the command channel works (and that menu.so is loaded).
        await self.command("reginfo")

    async def _shutdown_ctrl(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None

    # -- ctrl_tcp --------------------------------------------------------------------------------
    async def _read_ctrl(self) -> None:
        assert self._reader is not None
        try:
            while True:
                msg = await _read_netstring(self._reader)
                if msg.get("response"):
                    fut = self._responses.pop(str(msg.get("token")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    msg["_t"] = round(time.monotonic() - self.proc.started_at, 3)
                    self.events.append(msg)
                    self.proc._append(f"[harness] event {json.dumps(msg)}\n")
                await self.proc.notify()
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._ctrl_error = e
        except Exception as e:  # malformed input: make it visible to waiters
            self._ctrl_error = e
            raise
        finally:
            for fut in self._responses.values():
                if not fut.done():
                    fut.set_exception(
                        self.proc.error(f"ctrl_tcp connection lost ({self._ctrl_error!r})")
                    )
            self._responses.clear()
            with contextlib.suppress(Exception):
                await self.proc.notify()

    async def command(self, command: str, params: str | None = None, timeout: float = 5.0) -> str:
        """Run a baresip command (as typed after '/' in the console); returns its text output.
        Raises PeerError if baresip answers ok=false or does not answer within `timeout`."""
        if self._writer is None or self._ctrl_error is not None:
            raise self.proc.error(f"ctrl_tcp not connected (command {command!r})")
        self._token += 1
        token = str(self._token)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._responses[token] = fut
        msg: dict[str, Any] = {"command": command, "token": token}
        if params is not None:
            msg["params"] = params
        self.proc._append(f"[harness] command {json.dumps(msg)}\n")
        self._writer.write(_netstring(msg))
        await self._writer.drain()
        try:
            resp = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._responses.pop(token, None)
            raise self.proc.error(f"no response to command {command!r} within {timeout}s") from None
        if not resp.get("ok"):
            raise self.proc.error(f"command {command} {params or ''} failed: {resp.get('data')!r}")
        return str(resp.get("data", ""))

    # -- call control ----------------------------------------------------------------------------
    async def dial(self, uri: str) -> None:
        """Start an outgoing call. Follow with wait_event("CALL_ESTABLISHED") / "CALL_CLOSED"."""
        if not uri.startswith(("sip:", "sips:")) or "@" not in uri:
            raise ValueError(f"dial needs a full SIP URI like sip:user@127.0.0.1:5062, not {uri!r}")
        if self.transport != "udp" and "transport=" not in uri:
            uri = f"{uri};transport={self.transport}"
        await self.command("dial", uri)

    async def answer(self) -> None:
        """Answer the current incoming call (after CALL_INCOMING)."""
        await self.command("accept")

    async def hangup(self) -> None:
        """Hang up the current call (CANCEL if still ringing outgoing, 486 if incoming ringing)."""
        await self.command("hangup")

    async def send_dtmf(self, digits: str) -> None:
        """Send DTMF as RFC 4733 telephone-events, one `sndcode` command per digit.

        baresip sends each digit as a start event plus end packets (~160 ms tone in total)."""
        for d in digits:
            if d not in "0123456789*#ABCD":
                raise ValueError(f"not a DTMF digit: {d!r}")
            await self.command("sndcode", d)

    # -- events ----------------------------------------------------------------------------------
    async def wait_event(self, type: str | Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        """Return the oldest not-yet-consumed event of `type` (or any of several types), waiting
        up to `timeout` s for it; the event is then consumed. Events that arrived earlier count."""
        types = {type} if isinstance(type, str) else set(type)

        def find() -> dict[str, Any] | None:
            for i, ev in enumerate(self.events):
                if i not in self._consumed and ev.get("type") in types:
                    self._consumed.add(i)
                    return ev
            return None

        def check() -> dict[str, Any] | None:
            ev = find()
            if ev is None and self._ctrl_error is not None:
                raise self.proc.error(f"ctrl_tcp connection lost while waiting for {sorted(types)}")
            return ev

        try:
            ev = await self.proc.wait_until(check, timeout, f"event {'/'.join(sorted(types))}")
        except PeerError as e:
            seen = ", ".join(f"{x.get('type')}({x.get('param', '')})" for x in self.events[-15:])
            raise PeerError(f"{e}\n----- last events: {seen}") from None
        assert isinstance(ev, dict)
        return ev

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    async def _delayed_answerer(self) -> None:
        answered = 0

        def incoming() -> int:
            return sum(1 for e in self.events if e.get("type") == "CALL_INCOMING")

        while self.proc.returncode is None:
            await self.proc.wait_until(
                lambda n=answered: incoming() > n or self.proc.returncode is not None,  # type: ignore[misc]
                3600,
                "incoming call",
                allow_exit=True,
            )
            if self.proc.returncode is not None:
                return
            answered += 1
            await asyncio.sleep(self._answer_delay)  # simulated human reaction time
            with contextlib.suppress(PeerError):
                await self.command("accept")

    # -- recordings ------------------------------------------------------------------------------
    def received_wavs(self) -> list[Path]:
        """All `dump-*-dec.wav` files (what this peer heard), oldest first."""
        return sorted(self.dir.glob("dump-*-dec.wav"), key=lambda p: (p.stat().st_mtime, p.name))

    async def wait_recorded(self, seconds: float, timeout: float = 10.0) -> Path:
        """Wait until the current call's `-dec.wav` dump holds `seconds` of audio (baresip
        records what its player consumed: received audio, or silence when no RTP came). Use it
        to let some media flow before hanging up, instead of sleeping."""
        want = 44 + int(seconds * SAMPLE_RATE) * 2

        def check() -> Path | None:
            wavs = self.received_wavs()
            if wavs and wavs[-1].stat().st_size >= want:
                return wavs[-1]
            return None

        path = await self.proc.wait_until(
            check, timeout, f"{seconds}s of received audio", poll=0.02
        )
        assert isinstance(path, Path)
        return path

    async def received_wav(self, timeout: float = 5.0) -> Path | None:
        """The newest recording of what this peer heard, once baresip has closed it (the call
        must be over). None if `record` was off or no call got media."""
        if not self.received_wavs():
            return None
        path = self.received_wavs()[-1]
        await self.proc.wait_until(
            lambda: _wav_complete(path),
            timeout,
            f"{path.name} to be finalised (call closed?)",
            poll=0.02,
            allow_exit=True,
        )
        return path


def _config(
    sip_port: int, ctrl_port: int, mic: Path, peer_dir: Path, record: bool, extra: Iterable[str]
) -> str:
    lines = [
        "poll_method\t\tepoll",
        f"sip_listen\t\t{LOOPBACK}:{sip_port}",
        # Bind media + SDP c= to loopback (default would be the first non-loopback interface).
        f"net_interface\t\t{LOOPBACK}",
        "call_local_timeout\t120",
        "call_max_calls\t\t4",
        # No sound card: the microphone is a wav file, the speaker is a dead-end aubridge device.
        f"audio_source\t\taufile,{mic}",
        "audio_player\t\taubridge,nil",
        "audio_alert\t\taubridge,nil",
        "audio_level\t\tno",
        "ausrc_format\t\ts16",
        "auplay_format\t\ts16",
        f"rtp_ports\t\t{RTP_RANGE[0]}-{RTP_RANGE[1]}",
        "rtcp_mux\t\tno",
        "jitter_buffer_delay\t1-5",
        "statmode_default\toff",
        f"module_path\t\t{MODULE_PATH}",
        "module\t\t\tg711.so",
        "module\t\t\taufile.so",
        "module\t\t\taubridge.so",
    ]
    if record:
        lines += ["module\t\t\tsndfile.so", f"snd_path\t\t{peer_dir}"]
    lines += [
        "module_tmp\t\taccount.so",
        "module_app\t\tmenu.so",
        "module_app\t\tctrl_tcp.so",
        f"ctrl_tcp_listen\t\t{LOOPBACK}:{ctrl_port}",
        *extra,
    ]
    return "\n".join(lines) + "\n"
