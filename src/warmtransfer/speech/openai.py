"""Remote speech over the OpenAI audio API, or any server that speaks it (a LocalAI, a vLLM or
speaches box, a gateway): `/audio/speech` for text-to-speech, `/audio/transcriptions` for
speech-to-text.

How it is wrapped follows from being a paid remote service in the middle of a phone call:

- Misconfiguration must show before a call is touched, not when a caller is already on hold.
  `check()` validates the settings and makes one cheap authenticated request (`GET /models`,
  which costs nothing) so a wrong URL, a dead host or a rejected key fails at start-up with a
  `SpeechProviderError` that names the provider and the setting to fix. A server without
  `/models` (404) passes: it is reachable, and its key is tested by the first real request.
- Every request has a timeout (connect 5 s at most), so a hung server costs a bounded wait.
- The API key is a secret: it is sent only in the Authorization header, never put in a message,
  a log line or a repr, and it is blanked out of any error text a server echoes back.
- Text-to-speech asks for raw 16-bit mono PCM (24 kHz: what OpenAI sends for "pcm"), or WAV;
  compatible servers that ignore the format and send MP3 get an error saying what came back,
  since decoding compressed audio would need a codec library the project does not otherwise use.
  Clips are resampled to the requested rate with soxr and kept in a `ClipCache`: a repeated
  prompt is paid for once.
- Speech-to-text uploads a WAV at the clip's rate, capped at 16 kHz (the rate Whisper-style
  models work at; more only makes the upload bigger).
- An httpx client holds connections bound to one event loop, so each loop gets its own client.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tempfile
import time
import wave
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import numpy as np
from numpy.typing import NDArray

from warmtransfer.base_url import QUERY_PROBLEM, BaseUrl
from warmtransfer.media.audio import PHONE_RATE, AudioClip
from warmtransfer.media.wav import AudioFormatError, read_wav, resample
from warmtransfer.speech.cache import ClipCache
from warmtransfer.speech.tts import SpeechProviderError

__all__ = ["OpenAISTT", "OpenAITTS"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
"""Seconds for a whole request: a sentence of speech usually takes 1-3 s to come back."""

CHECK_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
PCM_RATE = 24000
"""OpenAI's "pcm" response format: 24 kHz, 16-bit, mono, little-endian."""

UPLOAD_MAX_RATE = 16000

KEY_SETTING = "api_key (for example from OPENAI_API_KEY)"
_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
_PCM_TYPES = ("audio/pcm", "audio/l16", "audio/raw", "application/octet-stream", "")
_COMPRESSED = {
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"\xff\xf2": "MP3",
    b"OggS": "Ogg (Opus/Vorbis)",
    b"fLaC": "FLAC",
}


class _OpenAIClient:
    """What both clients share: settings, the check, requests and their errors."""

    provider = "openai"

    def __init__(
        self, base_url: str | None, api_key: str | None, model: str, *, timeout: float
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._base = BaseUrl.split(base_url or "")
        self.base_url = self._base.url
        self._api_key = (api_key or "").strip()
        self.model = model
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    def _fail(self, problem: str) -> SpeechProviderError:
        return SpeechProviderError(f"{self.provider}: {problem}")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _check_settings(self) -> None:
        if not self.base_url:
            raise self._fail(
                "no base URL; set base_url to the API root, e.g. https://api.openai.com/v1"
            )
        if self._base.has_query:
            raise self._fail(QUERY_PROBLEM)
        if not self.base_url.startswith(("http://", "https://")):
            raise self._fail(f"base_url must start with http:// or https://, not {self.base_url!r}")
        if not self._api_key:
            raise self._fail(
                f"no API key; set {KEY_SETTING} (any non-empty value for a server without keys)"
            )
        if not self.model:
            raise self._fail("no model; set model")

    async def check(self) -> None:
        """Fail fast, before any call: settings present, host reachable, key accepted."""
        self._check_settings()
        response = await self._request("GET", "/models", timeout=min(CHECK_TIMEOUT, self.timeout))
        if response.status_code == 404:
            log.info("%s: %s has no /models; the key is tested on first use", self, self.base_url)
            return
        self._raise_for_status(response, "/models")

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close this loop's connections (the client opens new ones if used again)."""
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request with the key and a timeout; transport failures as SpeechProviderError."""
        self._check_settings()
        url = f"{self.base_url}{path}"
        seconds = self.timeout if timeout is None else timeout
        limits = httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT, seconds))
        headers = {"Authorization": f"Bearer {self._api_key}"}
        started = time.perf_counter()
        try:
            response = await self._http().request(
                method, url, headers=headers, timeout=limits, auth=self._base.request_auth, **kwargs
            )
        except httpx.ConnectTimeout as exc:
            raise self._fail(
                f"cannot reach {self.base_url} (no connection within {limits.connect} s); "
                "check base_url and that the server is up"
            ) from exc
        except httpx.TimeoutException as exc:
            raise self._fail(
                f"{self.base_url} did not answer {method} {path} within {seconds} s; "
                "the server is overloaded or the timeout is too short"
            ) from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise self._fail(
                f"cannot reach {self.base_url} ({self._redact(str(exc)) or type(exc).__name__}); "
                "check base_url and that the server is up"
            ) from exc
        except httpx.HTTPError as exc:
            raise self._fail(
                f"{method} {url} failed: {self._redact(str(exc)) or type(exc).__name__}"
            ) from exc
        log.debug(
            "%s %s -> %d in %.0f ms",
            method,
            url,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _detail(self, response: httpx.Response) -> str:
        """The server's own explanation, short and without the key."""
        try:
            body = response.json()
        except ValueError:
            text = response.text
        else:
            error = body.get("error") if isinstance(body, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            text = str(message if message else body)
        return self._redact(" ".join(text.split()))[:200]

    def _raise_for_status(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status < 300:
            return
        detail = self._detail(response)
        if status == 401:
            raise self._fail(
                f"{self.base_url} rejected the API key (HTTP 401: {detail}); "
                f"set {KEY_SETTING} to a valid key"
            )
        if status == 403:
            raise self._fail(
                f"{self.base_url} refused access to {path} (HTTP 403: {detail}); "
                f"check that the key in {KEY_SETTING} may use model {self.model!r}"
            )
        if status == 404:
            raise self._fail(
                f"{self.base_url}{path} does not exist (HTTP 404: {detail}); check base_url "
                "(it usually ends in /v1) and model"
            )
        if status == 429:
            raise self._fail(f"rate limited or out of quota (HTTP 429: {detail})")
        raise self._fail(f"{path} failed with HTTP {status}: {detail}")


def _wav_bytes(samples: NDArray[np.int16], rate: int) -> bytes:
    """A 16-bit mono WAV in memory (media.wav writes to files; an upload needs bytes)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return out.getvalue()


def _read_wav_bytes(data: bytes, rate: int) -> AudioClip:
    """Decode WAV bytes with media.wav's reader (it only reads files, so via a temporary one)."""
    handle, name = tempfile.mkstemp(prefix="warmtransfer-tts-", suffix=".wav")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return read_wav(Path(name), rate)
    finally:
        os.unlink(name)


class OpenAITTS(_OpenAIClient):
    """Text-to-speech over `POST {base_url}/audio/speech`."""

    provider = "openai-tts"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str = "tts-1",
        voice: str = "alloy",
        *,
        response_format: Literal["pcm", "wav"] = "pcm",
        pcm_rate: int = PCM_RATE,
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = 64,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout=timeout)
        if response_format not in ("pcm", "wav"):
            raise ValueError(f"response_format is 'pcm' or 'wav', not {response_format!r}")
        if pcm_rate <= 0:
            raise ValueError(f"pcm_rate must be positive, not {pcm_rate}")
        self.voice = voice
        self.response_format = response_format
        self.pcm_rate = pcm_rate
        self._cache = ClipCache(cache_size)

    @property
    def syntheses(self) -> int:
        """How many requests were sent for speech (cache hits and shared requests excluded)."""
        return self._cache.renders

    async def synthesize(self, text: str, rate: int = PHONE_RATE) -> AudioClip:
        """Speak `text` as a mono clip at `rate`; repeated texts come from the cache."""
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, not {rate}")
        if not text.strip():
            return AudioClip(np.zeros(0, dtype=np.int16), rate)
        return await self._cache.get((text, rate), lambda: self._render(text, rate))

    async def _render(self, text: str, rate: int) -> AudioClip:
        body = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.response_format,
        }
        response = await self._request("POST", "/audio/speech", json=body)
        self._raise_for_status(response, "/audio/speech")
        clip = await self._decode(response, rate)
        samples = clip.samples.copy()
        samples.flags.writeable = False
        return AudioClip(samples, rate)

    async def _decode(self, response: httpx.Response, rate: int) -> AudioClip:
        """The response body as a clip at `rate`, or an error saying what came back instead."""
        data = response.content
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not data:
            raise self._fail("the server answered without audio (empty body)")
        if kind.startswith(("application/json", "text/")):
            raise self._fail(f"the server sent {kind} instead of audio: {self._detail(response)}")
        if data.startswith(b"RIFF") or kind in _WAV_TYPES:
            try:
                return await asyncio.to_thread(_read_wav_bytes, data, rate)
            except AudioFormatError as exc:
                problem = str(exc).split(": ", 1)[-1]  # drop the temporary file's name
                raise self._fail(f"the server's WAV audio cannot be used: {problem}") from exc
        codec = next((name for magic, name in _COMPRESSED.items() if data.startswith(magic)), None)
        if data[4:8] == b"ftyp":
            codec = "MP4/AAC"
        if codec is not None or kind not in _PCM_TYPES:
            what = codec or kind
            raise self._fail(
                f"the server sent {what} audio, which cannot be used; it must honour "
                "response_format 'pcm' (16-bit mono) or 'wav' (set response_format)"
            )
        if len(data) % 2:
            raise self._fail(
                f"the server's PCM audio has an odd number of bytes ({len(data)}), so it is not "
                f"16-bit samples; set response_format='wav' if it sends another format"
            )
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return AudioClip(resample(samples, self.pcm_rate, rate), rate)


class OpenAISTT(_OpenAIClient):
    """Speech-to-text over `POST {base_url}/audio/transcriptions` (multipart, one WAV file)."""

    provider = "openai-stt"

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str = "whisper-1",
        *,
        language: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(base_url, api_key, model, timeout=timeout)
        self.language = language

    async def transcribe(self, clip: AudioClip) -> str:
        """The words heard in `clip` (any rate), as the server writes them; "" for no audio."""
        if len(clip.samples) == 0:
            return ""
        rate = min(clip.rate, UPLOAD_MAX_RATE)
        upload = _wav_bytes(resample(clip.samples, clip.rate, rate), rate)
        fields = {"model": self.model, "response_format": "json"}
        if self.language:
            fields["language"] = self.language
        response = await self._request(
            "POST",
            "/audio/transcriptions",
            data=fields,
            files={"file": ("audio.wav", upload, "audio/wav")},
        )
        self._raise_for_status(response, "/audio/transcriptions")
        try:
            body = response.json()
        except ValueError as exc:
            raise self._fail(
                f"the server's transcription is not JSON: {self._detail(response)}"
            ) from exc
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise self._fail(f"the server's transcription has no text: {self._detail(response)}")
        return text.strip()
