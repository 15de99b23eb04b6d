"""The OpenAI-compatible speech clients against a local fake server.

A fake is used only because the real service is paid and remote; it is a real HTTP server on
loopback (stdlib http.server in a thread), so requests go through httpx, sockets and all. Every
test that uses it has `fake_openai` in its name.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import numpy as np
import pytest

from tests.audio_checks import tone_fraction
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.speech.openai import OpenAISTT, OpenAITTS
from warmtransfer.speech.stt import SpeechToText
from warmtransfer.speech.tts import SpeechProviderError, TextToSpeech

KEY = "sk-test-0123456789abcdef"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, EmailMessage]:
        """multipart/form-data fields by name."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        parts = message.iter_parts()
        return {
            str(part.get_param("name", header="content-disposition")): cast(EmailMessage, part)
            for part in parts
        }


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    hang: bool = False  # hold the request open until the test ends


@dataclass
class FakeOpenAI:
    server: ThreadingHTTPServer
    requests: list[Request] = field(default_factory=list)
    replies: dict[tuple[str, str], Reply] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def reply(self, method: str, path: str, **reply: Any) -> None:
        self.replies[(method, path)] = Reply(**reply)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.fake.requests.append(Request(self.command, self.path, headers, body))
        missing = Reply(404, b'{"error": {"message": "no such route"}}')
        reply = self.fake.replies.get((self.command, self.path), missing)
        if reply.hang:
            self.fake.release.wait(10)
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeOpenAI(server)
    server.RequestHandlerClass = type("BoundHandler", (Handler,), {"fake": fake})
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="fake-openai", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_fake_openai_clients_implement_the_speech_protocols() -> None:
    tts: TextToSpeech = OpenAITTS("http://x/v1", KEY)
    stt: SpeechToText = OpenAISTT("http://x/v1", KEY)
    assert KEY not in repr(tts) + repr(stt)


async def test_fake_openai_tts_sends_the_documented_request_and_decodes_pcm(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reply(
        "POST",
        "/v1/audio/speech",
        body=tone(0.5, 24000).tobytes(),
        content_type="application/octet-stream",
    )
    async with OpenAITTS(fake_openai.base_url, KEY, "tts-1", "alloy") as tts:
        clip = await tts.synthesize("Please hold.")
        wide = await tts.synthesize("Please hold.", rate=16000)
    [request, _] = fake_openai.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "model": "tts-1",
        "input": "Please hold.",
        "voice": "alloy",
        "response_format": "pcm",
    }
    assert (clip.rate, wide.rate) == (PHONE_RATE, 16000)
    assert clip.duration == pytest.approx(0.5, abs=0.01)
    assert wide.duration == pytest.approx(0.5, abs=0.01)
    assert tone_fraction(clip.samples, 440.0) > 0.9  # resampled, not reinterpreted


async def test_fake_openai_tts_pays_once_per_prompt(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(
        "POST", "/v1/audio/speech", body=tone(0.2, 24000).tobytes(), content_type="audio/pcm"
    )
    tts = OpenAITTS(fake_openai.base_url, KEY)
    first = await tts.synthesize("Connecting you now.")
    again = await tts.synthesize("Connecting you now.")
    shared = await asyncio.gather(*(tts.synthesize("One moment.") for _ in range(4)))
    await tts.aclose()
    assert again is first
    assert all(clip is shared[0] for clip in shared)
    assert len(fake_openai.requests) == tts.syntheses == 2
    with pytest.raises(ValueError, match="read-only"):
        first.samples[0] = 1
    assert (await tts.synthesize("   ")).duration == 0.0  # nothing to say, nothing sent
    assert len(fake_openai.requests) == 2


async def test_fake_openai_tts_decodes_wav_at_any_rate(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(
        "POST",
        "/v1/audio/speech",
        body=wav_bytes(tone(0.4, 22050), 22050),
        content_type="audio/wav",
    )
    async with OpenAITTS(fake_openai.base_url, KEY, response_format="wav") as tts:
        clip = await tts.synthesize("Thank you for waiting.")
    assert fake_openai.requests[0].json()["response_format"] == "wav"
    assert clip.rate == PHONE_RATE
    assert clip.duration == pytest.approx(0.4, abs=0.01)
    assert tone_fraction(clip.samples, 440.0) > 0.9


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b'{"status": "queued"}', "application/json", "application/json instead of audio"),
        (b"ID3\x04\x00\x00" + bytes(200), "audio/mpeg", "MP3 audio, which cannot be used"),
        (b"\xff\xfb\x90\x00" + bytes(200), "application/octet-stream", "MP3 audio"),
        (bytes(1001), "application/octet-stream", "odd number of bytes"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav", "WAV audio cannot be used"),
        (b"", "application/octet-stream", "without audio"),
    ],
)
async def test_fake_openai_tts_unusable_audio_is_a_clear_error(
    fake_openai: FakeOpenAI, body: bytes, content_type: str, problem: str
) -> None:
    fake_openai.reply("POST", "/v1/audio/speech", body=body, content_type=content_type)
    async with OpenAITTS(fake_openai.base_url, KEY) as tts:
        with pytest.raises(SpeechProviderError, match=f"^openai-tts: .*{problem}"):
            await tts.synthesize("Hello.")
        # failures are not cached: the next request asks again
        with pytest.raises(SpeechProviderError):
            await tts.synthesize("Hello.")
    assert len(fake_openai.requests) == 2


async def test_fake_openai_check_before_use_makes_one_cheap_authenticated_request(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reply("GET", "/v1/models", body=b'{"object": "list", "data": []}')
    for client in (OpenAITTS(fake_openai.base_url, KEY), OpenAISTT(fake_openai.base_url, KEY)):
        async with client:
            await client.check()
    assert [(r.method, r.path) for r in fake_openai.requests] == [("GET", "/v1/models")] * 2
    assert {r.headers["authorization"] for r in fake_openai.requests} == {f"Bearer {KEY}"}


async def test_fake_openai_check_passes_a_server_without_a_models_list(
    fake_openai: FakeOpenAI,
) -> None:
    async with OpenAISTT(fake_openai.base_url + "/", KEY) as stt:  # trailing slash is fine
        await stt.check()  # /models answers 404 here: reachable, key tested on first use
    assert fake_openai.requests[0].path == "/v1/models"


async def test_fake_openai_check_reports_server_errors(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("GET", "/v1/models", status=500, body=b'{"error": "database on fire"}')
    async with OpenAITTS(fake_openai.base_url, KEY) as tts:
        with pytest.raises(SpeechProviderError, match="HTTP 500: database on fire"):
            await tts.check()


@pytest.mark.parametrize(
    ("base_url", "key", "setting"),
    [
        (None, KEY, "no base URL; set base_url"),
        ("", KEY, "no base URL; set base_url"),
        ("api.openai.com/v1", KEY, "base_url must start with http"),
        ("http://127.0.0.1:9/v1", None, "no API key; set api_key"),
        ("http://127.0.0.1:9/v1", "  ", "no API key; set api_key"),
    ],
)
async def test_fake_openai_check_names_the_missing_setting_without_any_request(
    base_url: str | None, key: str | None, setting: str
) -> None:
    for client in (OpenAITTS(base_url, key), OpenAISTT(base_url, key)):
        with pytest.raises(SpeechProviderError, match=f"^openai-(tts|stt): {setting}"):
            await client.check()


async def test_fake_openai_rejected_key_names_the_setting_and_never_shows_the_key(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()
    for path in ("/v1/models", "/v1/audio/speech", "/v1/audio/transcriptions"):
        fake_openai.reply("GET" if path.endswith("models") else "POST", path, status=401, body=echo)
    tts = OpenAITTS(fake_openai.base_url, KEY)
    stt = OpenAISTT(fake_openai.base_url, KEY)
    errors = []
    for attempt in (tts.check(), tts.synthesize("Hi."), stt.check(), stt.transcribe(tone_clip())):
        with pytest.raises(SpeechProviderError, match=r"rejected the API key \(HTTP 401") as error:
            await attempt
        errors.append(str(error.value))
    await tts.aclose()
    await stt.aclose()
    assert all("set api_key" in message for message in errors)
    assert all("Incorrect API key provided: ***" in message for message in errors)
    assert len(fake_openai.requests) == 4 and caplog.records  # requests were made and logged
    assert KEY not in caplog.text
    assert not any(KEY in message for message in errors)


async def test_fake_openai_unreachable_server_names_the_base_url() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    for client in (OpenAITTS(base_url, KEY), OpenAISTT(base_url, KEY)):
        started = time.perf_counter()
        with pytest.raises(SpeechProviderError, match=f"cannot reach {base_url} .*check base_url"):
            await client.check()
        assert time.perf_counter() - started < 5.0


async def test_fake_openai_credentials_in_the_base_url_are_never_shown(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A base URL may carry ``user:password@`` or a ``?key=``: errors and logs name the server
    and the path (what a 404 is about), never those."""
    caplog.set_level(logging.DEBUG)
    secret = "pa55word-in-the-url"
    fake_openai.reply("POST", "/v1/audio/speech", status=404, body=b'{"error": "no route"}')
    with_password = fake_openai.base_url.replace("http://", f"http://gateway:{secret}@")
    tts = OpenAITTS(with_password, KEY)
    with pytest.raises(SpeechProviderError, match=r"/v1/audio/speech does not exist") as error:
        await tts.synthesize("Hello.")
    await tts.aclose()
    unreachable = f"http://gateway:{secret}@127.0.0.1:{free_port()}/v1"
    stt = OpenAISTT(unreachable, KEY)
    with pytest.raises(SpeechProviderError, match=r"cannot reach http://127.0.0.1:\d+/v1 ") as gone:
        await stt.check()
    await stt.aclose()
    with_query = OpenAITTS(f"{fake_openai.base_url}?key={secret}", KEY)
    with pytest.raises(
        SpeechProviderError, match=r"must not carry a query.*put the key in api_key"
    ) as query:
        await with_query.check()
    shown = [str(error.value), str(gone.value), str(query.value), repr(tts), repr(stt)]
    assert len(fake_openai.requests) == 1  # the 404 came from the server; not the refused query
    assert fake_openai.requests[0].headers["authorization"].startswith("Basic ")  # as httpx did
    assert not [text for text in [*shown, caplog.text] if secret in text or "gateway" in text]


async def test_fake_openai_a_hung_server_costs_at_most_the_timeout(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reply("POST", "/v1/audio/speech", hang=True)
    tts = OpenAITTS(fake_openai.base_url, KEY, timeout=0.3)
    started = time.perf_counter()
    with pytest.raises(SpeechProviderError, match=r"did not answer POST /audio/speech within 0.3"):
        await tts.synthesize("Are you there?")
    assert time.perf_counter() - started < 3.0
    fake_openai.release.set()
    await tts.aclose()


def tone_clip(seconds: float = 0.3, rate: int = PHONE_RATE) -> AudioClip:
    return AudioClip(tone(seconds, rate), rate)


async def test_fake_openai_stt_uploads_one_wav_and_returns_the_text(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reply("POST", "/v1/audio/transcriptions", body=b'{"text": " Yes, I\'ll take it. "}')
    clip = tone_clip(0.5)
    async with OpenAISTT(fake_openai.base_url, KEY, "whisper-1", language="en") as stt:
        text = await stt.transcribe(clip)
    assert text == "Yes, I'll take it."
    [request] = fake_openai.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/transcriptions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    form = request.form()
    assert set(form) == {"model", "response_format", "language", "file"}
    assert form["model"].get_content() == "whisper-1"
    assert form["response_format"].get_content() == "json"
    assert form["language"].get_content() == "en"
    upload = form["file"]
    assert (upload.get_filename(), upload.get_content_type()) == ("audio.wav", "audio/wav")
    payload = upload.get_payload(decode=True)
    assert isinstance(payload, bytes)
    with wave.open(io.BytesIO(payload)) as sent:
        assert (sent.getnchannels(), sent.getsampwidth(), sent.getframerate()) == (1, 2, 8000)
        samples = np.frombuffer(sent.readframes(sent.getnframes()), dtype="<i2")
    assert np.array_equal(samples, clip.samples)


@pytest.mark.parametrize(("rate", "sent_rate"), [(44100, 16000), (16000, 16000), (11025, 11025)])
async def test_fake_openai_stt_caps_the_upload_rate(
    fake_openai: FakeOpenAI, rate: int, sent_rate: int
) -> None:
    fake_openai.reply("POST", "/v1/audio/transcriptions", body=b'{"text": "ok"}')
    async with OpenAISTT(fake_openai.base_url, KEY) as stt:
        assert await stt.transcribe(tone_clip(0.5, rate)) == "ok"
    payload = fake_openai.requests[0].form()["file"].get_payload(decode=True)
    assert isinstance(payload, bytes)
    with wave.open(io.BytesIO(payload)) as sent:
        assert sent.getframerate() == sent_rate
        assert sent.getnframes() / sent_rate == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"<html>gateway</html>", "text/html", "not JSON"),
        (b'{"transcript": "yes"}', "application/json", "has no text"),
    ],
)
async def test_fake_openai_stt_unusable_reply_is_a_clear_error(
    fake_openai: FakeOpenAI, body: bytes, content_type: str, problem: str
) -> None:
    fake_openai.reply("POST", "/v1/audio/transcriptions", body=body, content_type=content_type)
    async with OpenAISTT(fake_openai.base_url, KEY) as stt:
        with pytest.raises(SpeechProviderError, match=f"^openai-stt: .*{problem}"):
            await stt.transcribe(tone_clip())


async def test_fake_openai_stt_sends_nothing_for_an_empty_clip(fake_openai: FakeOpenAI) -> None:
    async with OpenAISTT(fake_openai.base_url, KEY) as stt:
        assert await stt.transcribe(AudioClip.silence(0.0)) == ""
    assert fake_openai.requests == []


async def test_fake_openai_engine_close_closes_its_speech_clients(
    fake_openai: FakeOpenAI,
) -> None:
    """An engine built from a config with OpenAI-compatible speech owns those clients: its
    close() must release their connections (a long-lived service closing engines leaked them)."""
    from warmtransfer.consult.chat import ChatClient
    from warmtransfer.engine import Engine

    fake_openai.reply("GET", "/v1/models", body=b'{"data": []}')
    fake_openai.reply(
        "POST", "/v1/audio/speech", body=tone(0.2, 24000).tobytes(), content_type="audio/pcm"
    )
    tts = OpenAITTS(fake_openai.base_url, KEY)
    stt = OpenAISTT(fake_openai.base_url, KEY)
    chat = ChatClient(fake_openai.base_url, KEY, "gpt-test")  # the STT serves the LLM consult
    engine = await Engine("127.0.0.1", 0, tts=tts, stt=stt, chat=chat).start()
    open_clients = [tts._client, stt._client]
    assert all(client is not None and not client.is_closed for client in open_clients)
    await engine.close()
    assert all(client is not None and client.is_closed for client in open_clients)
    assert tts._client is None and stt._client is None
