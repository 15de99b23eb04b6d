"""One call's record as a self-contained HTML page: `warmtransfer report CALL_ID --records PATH`.

The page is one file with nothing to fetch (inline CSS and JS; a Content-Security-Policy that
forbids anything else), so it can be attached to a ticket, mailed, or opened years later: the
timeline of each transfer, a SIP ladder diagram of every leg (an SVG: columns are the engine,
the caller and each human; an arrow per message, labelled with its first line; click one for
its full text), the briefing, the outcome with its attempts, and the recordings, embedded as
base64 WAV data URIs in <audio> elements. A recording over `max_audio_bytes` (or past the
page's total budget) is not embedded: the page says so and gives its path instead, because a
page of hundreds of megabytes would not open at all.

Everything shown comes from outside (SIP messages from any peer, a caller's words), so every
string is escaped; no stored text is ever put in a script.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from warmtransfer.server.recording import CALLER_LEG
from warmtransfer.server.records import (
    CallRecord,
    SipRecord,
    TransferRecord,
    load_call,
    open_for_reading,
)

__all__ = ["MAX_AUDIO_BYTES", "MAX_PAGE_AUDIO_BYTES", "render_report", "write_report"]

#: A recording larger than this is not embedded in the page (10 MB: ~2.5 min of 8 kHz stereo).
MAX_AUDIO_BYTES = 10 * 1024 * 1024
#: All embedded recordings together, at most (base64 adds a third on top).
MAX_PAGE_AUDIO_BYTES = 40 * 1024 * 1024

_COLUMN = 270  # px between two lifelines
_ROW = 30  # px between two arrows
_GUTTER = 90  # px left of the engine's lifeline, for times
_TOP = 56  # px above the first arrow, for the column headings
_LABEL_CHARS = 32  # first lines longer than this are shortened on the arrow (full in title)

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "media-src data:; img-src data:"
)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1d2430;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccd}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0}
td,th{border:1px solid #dde;padding:3px 6px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f2f4f8}.mono,td.mono{font-family:ui-monospace,monospace}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px}
.ok{background:#d9f5df;color:#145c2a}.bad{background:#fde2e1;color:#8a1c17}
.warn{background:#fff3cd;color:#6b4e00}
.note{background:#fff8e5;border-left:4px solid #e0b000;padding:6px 10px;margin:6px 0}
.ladder{overflow-x:auto;border:1px solid #dde;background:#fbfcfe}
svg text{font-family:ui-monospace,monospace;font-size:12px}
svg .head{font-family:system-ui,sans-serif;font-weight:600;font-size:13px}
svg .peer{fill:#667;font-size:11px}svg .time{fill:#667;font-size:11px}
svg .life{stroke:#99a;stroke-dasharray:4 3}
svg .arrow{cursor:pointer}svg .arrow line{stroke-width:1.6}
svg .out line{stroke:#1f5fbf}svg .in line{stroke:#2b8a3e}
svg .out text{fill:#1f5fbf}svg .in text{fill:#2b8a3e}
svg .arrow:hover text{font-weight:700}
details.sip{margin:2px 0}details.sip pre{background:#f6f7f9;padding:6px;overflow-x:auto;
margin:4px 0 8px;font-size:12px}details.sip.hit{outline:2px solid #e0b000}
blockquote{margin:6px 0;padding:4px 12px;border-left:4px solid #89a;background:#f6f7fb}
audio{width:100%;max-width:640px}
"""

_SCRIPT = """
(function () {
  var arrows = document.querySelectorAll('#ladder .arrow');
  document.body.setAttribute('data-arrows', String(arrows.length));
  arrows.forEach(function (arrow) {
    arrow.addEventListener('click', function () {
      var target = document.getElementById('sip-' + arrow.getAttribute('data-index'));
      if (!target) { return; }
      document.querySelectorAll('details.sip.hit').forEach(function (d) {
        d.classList.remove('hit');
      });
      target.open = true;
      target.classList.add('hit');
      target.scrollIntoView({block: 'center'});
    });
  });
  document.querySelectorAll('audio').forEach(function (audio) {
    audio.addEventListener('loadedmetadata', function () {
      audio.setAttribute('data-duration', audio.duration.toFixed(2));
    });
    audio.addEventListener('error', function () {
      audio.setAttribute('data-error', 'unplayable');
    });
  });
  document.body.setAttribute('data-ready', 'yes');
})();
"""


def _when(at: float | None) -> str:
    if at is None:
        return "—"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(at: float | None, origin: float) -> str:
    return "—" if at is None else f"+{at - origin:.3f} s"


def _size(count: int) -> str:
    return f"{count / 1024 / 1024:.1f} MB" if count >= 1024 * 1024 else f"{count / 1024:.0f} kB"


def _badge(ok: bool | None, incomplete: bool, text: str) -> str:
    kind = "warn" if incomplete else ("ok" if ok else "bad")
    return f'<span class="badge {kind}">{escape(text)}</span>'


def _columns(sip: Iterable[SipRecord]) -> list[str]:
    """engine, caller, then each other leg (a human) in the order it first appears."""
    columns = ["engine", CALLER_LEG]
    for message in sip:
        if message.leg not in columns:
            columns.append(message.leg)
    return columns


def _ladder(sip: tuple[SipRecord, ...]) -> str:
    if not sip:
        return '<p class="note">No SIP message was recorded for this call.</p>'
    columns = _columns(sip)
    x = {name: _GUTTER + 60 + i * _COLUMN for i, name in enumerate(columns)}
    peers: dict[str, str] = {}
    for message in sip:
        peers.setdefault(message.leg, message.peer)
    width = x[columns[-1]] + _COLUMN // 2 + 40
    height = _TOP + len(sip) * _ROW + 20
    origin = sip[0].at
    parts = [
        f'<svg id="ladder-svg" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="SIP ladder diagram">',
        "<defs>"
        '<marker id="head-out" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#1f5fbf"/>'
        "</marker>"
        '<marker id="head-in" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#2b8a3e"/>'
        "</marker></defs>",
    ]
    for name in columns:
        cx = x[name]
        parts.append(
            f'<text class="head" x="{cx}" y="18" text-anchor="middle">{escape(name)}</text>'
        )
        peer = "this engine" if name == "engine" else peers.get(name, "")
        parts.append(
            f'<text class="peer" x="{cx}" y="34" text-anchor="middle">{escape(peer)}</text>'
        )
        parts.append(f'<line class="life" x1="{cx}" y1="42" x2="{cx}" y2="{height - 6}"/>')
    for index, message in enumerate(sip):
        y = _TOP + index * _ROW + 12
        engine, far = x["engine"], x[message.leg]
        start, end = (engine, far) if message.direction == "out" else (far, engine)
        label = message.first_line
        if message.first_line.startswith("SIP/2.0 "):
            label = message.first_line[len("SIP/2.0 ") :]
        short = label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"
        title = f"{message.direction} {message.peer} at {_when(message.at)}: {message.first_line}"
        parts.append(
            f'<g class="arrow {escape(message.direction)}" data-index="{index}" '
            f'data-first-line="{escape(message.first_line)}" data-leg="{escape(message.leg)}">'
            f"<title>{escape(title)}</title>"
            f'<text class="time" x="6" y="{y + 4}">{_since(message.at, origin)}</text>'
            f'<line x1="{start}" y1="{y}" x2="{end}" y2="{y}" '
            f'marker-end="url(#head-{escape(message.direction)})"/>'
            f'<text x="{(start + end) / 2:.0f}" y="{y - 5}" text-anchor="middle">'
            f"{escape(short)}</text></g>"
        )
    parts.append("</svg>")
    return '<div class="ladder" id="ladder">' + "".join(parts) + "</div>"


def _messages(sip: tuple[SipRecord, ...]) -> str:
    rows = []
    origin = sip[0].at if sip else 0.0
    for index, message in enumerate(sip):
        arrow = "→" if message.direction == "out" else "←"
        cut = (
            f" (first {len(message.text)} characters of {message.size} bytes)"
            if message.truncated
            else ""
        )
        rows.append(
            f'<details class="sip" id="sip-{index}"><summary class="mono">'
            f"{_since(message.at, origin)} engine {arrow} {escape(message.leg)} "
            f"({escape(message.peer)}): {escape(message.first_line)}{escape(cut)}</summary>"
            f"<pre>{escape(message.text)}</pre></details>"
        )
    return "".join(rows)


def _timeline(transfer: TransferRecord) -> str:
    if not transfer.events:
        return '<p class="note">No event of this transfer was recorded.</p>'
    rows = []
    for event in transfer.events:
        attempt = "" if event.attempt is None else str(event.attempt + 1)
        fields = ", ".join(
            f"{k}={_field(v)}" for k, v in event.fields.items() if v not in (None, "", False)
        )
        rows.append(
            f'<tr><td class="mono">{_since(event.at, transfer.started)}</td>'
            f"<td>{escape(event.name)}</td><td>{escape(attempt)}</td>"
            f"<td>{escape(event.previous)} → {escape(event.state)}</td>"
            f'<td class="mono">{escape(fields)}</td></tr>'
        )
    return (
        '<table class="timeline"><tr><th>time</th><th>event</th><th>attempt</th>'
        "<th>move</th><th>details</th></tr>" + "".join(rows) + "</table>"
    )


def _field(value: object) -> str:
    if isinstance(value, dict) and "uri" in value:
        name = value.get("display_name")
        return f"{name} <{value['uri']}>" if name else str(value["uri"])
    return str(value)


def _briefing(handoff_json: str | None) -> str:
    if not handoff_json:
        return '<p class="note">No handoff record was stored.</p>'
    try:
        data: dict[str, Any] = json.loads(handoff_json)
    except ValueError:
        note = '<p class="note">The stored handoff record is not JSON.</p>'
        return f"{note}<pre>{escape(handoff_json)}</pre>"
    caller = " · ".join(str(v) for v in (data.get("caller_name"), data.get("caller_number")) if v)
    out = [f"<blockquote>{escape(str(data.get('whisper') or '(no whisper)'))}</blockquote>"]
    rows = [("caller", caller or "—"), ("intent", data.get("intent") or "—")]
    rows += [(f"fact: {k}", v) for k, v in (data.get("key_facts") or {}).items()]
    rows.append(("summary source", data.get("summary_source") or "—"))
    if data.get("flags"):
        rows.append(("flags", ", ".join(data["flags"])))
    if data.get("incomplete"):
        rows.append(("incomplete", "yes"))
    out.append(
        "<table>"
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )
    transcript = data.get("transcript") or []
    if transcript:
        turns = "".join(
            f"<tr><th>{escape(str(t.get('speaker', '')))}</th><td>{escape(str(t.get('text', '')))}"
            "</td></tr>"
            for t in transcript
        )
        out.append(f"<h4>Transcript</h4><table>{turns}</table>")
    return "".join(out)


def _outcome(transfer: TransferRecord) -> str:
    if transfer.incomplete:
        return (
            '<p class="note">This transfer never finished being recorded (the process ended '
            "mid-transfer, or is still running): no outcome.</p>"
        )
    status = ""
    if transfer.sip_status is not None:
        status = f" — SIP {transfer.sip_status} {transfer.sip_reason or ''}".rstrip()
    outcome = transfer.outcome or {}
    rows = [
        ("reason", f"{transfer.reason}{status}"),
        ("target", outcome.get("target_name") or outcome.get("target") or "—"),
        ("detail", transfer.detail or "—"),
        ("ended", _when(transfer.ended)),
    ]
    if outcome.get("recorded_message"):
        rows.append(("caller's message", outcome["recorded_message"]))
    table = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    attempts = []
    for number, attempt in enumerate(transfer.attempts, start=1):
        sip = attempt.get("sip_status")
        reason = str(attempt.get("reason") or "—") + (
            f" (SIP {sip} {attempt.get('sip_reason') or ''})".rstrip() if sip else ""
        )
        attempts.append(
            f"<tr><td>{number}</td><td>{escape(str(attempt.get('target_name') or ''))} "
            f'<span class="mono">{escape(str(attempt.get("target")))}</span></td>'
            f"<td>{attempt.get('round')}</td>"
            f'<td class="mono">{_since(attempt.get("ringing"), transfer.started)}</td>'
            f'<td class="mono">{_since(attempt.get("answered"), transfer.started)}</td>'
            f'<td class="mono">{_since(attempt.get("ended"), transfer.started)}</td>'
            f"<td>{escape(reason)}</td></tr>"
        )
    out = f"<table>{table}</table>"
    if attempts:
        out += (
            "<h4>Attempts</h4><table><tr><th>#</th><th>target</th><th>round</th><th>ringing</th>"
            "<th>answered</th><th>ended</th><th>how it ended</th></tr>"
            + "".join(attempts)
            + "</table>"
        )
    return out


def _recordings(record: CallRecord, max_audio_bytes: int, max_page_bytes: int) -> str:
    if not record.recordings:
        return '<p class="note">No recording was stored for this call.</p>'
    out = []
    budget = max_page_bytes
    for ref in record.recordings:
        head = f"<h3>{escape(ref.leg)}</h3>"
        try:
            size = ref.path.stat().st_size
        except OSError:
            out.append(f'{head}<p class="note">The file {escape(str(ref.path))} is missing.</p>')
            continue
        if size > max_audio_bytes or size > budget:
            limit = (
                f"the limit of {_size(max_audio_bytes)} per recording"
                if size > max_audio_bytes
                else f"what is left of the page's {_size(max_page_bytes)} for recordings"
            )
            out.append(
                f'{head}<p class="note too-big">Not embedded: this recording is {_size(size)}, '
                f"over {escape(limit)}. Listen to the file itself: "
                f'<span class="mono">{escape(str(ref.path))}</span></p>'
            )
            continue
        budget -= size
        data = base64.b64encode(ref.path.read_bytes()).decode("ascii")
        out.append(
            f'{head}<audio controls preload="metadata" data-leg="{escape(ref.leg)}" '
            f'src="data:audio/wav;base64,{data}"></audio>'
            f'<p class="mono">{escape(str(ref.path))} ({_size(size)}; left channel: what '
            "the far end said, right: what the engine sent)</p>"
        )
    return "".join(out)


def render_report(
    record: CallRecord,
    *,
    max_audio_bytes: int = MAX_AUDIO_BYTES,
    max_page_audio_bytes: int = MAX_PAGE_AUDIO_BYTES,
) -> str:
    """The page for one call."""
    state = "incomplete" if record.incomplete else "ended"
    sections = [
        f"<h1>Call {escape(record.call_id)}</h1>",
        f"<p>{_badge(not record.incomplete, record.incomplete, state)} "
        f"started {_when(record.started)}, ended {_when(record.ended)}"
        + (f", caller {escape(record.caller)}" if record.caller else "")
        + "</p>",
    ]
    if record.incomplete:
        sections.append(
            '<p class="note">The record of this call is incomplete: the process recording it '
            "stopped before the call ended. What is shown is everything written until then.</p>"
        )
    if not record.transfers:
        sections.append('<p class="note">No transfer was recorded on this call.</p>')
    for number, transfer in enumerate(record.transfers, start=1):
        if transfer.incomplete:
            result = "incomplete"
        else:
            result = "completed" if transfer.ok else f"failed: {transfer.reason}"
        sections.append(
            f'<section class="transfer" id="transfer-{escape(transfer.transfer_id)}">'
            f"<h2>Transfer {number}: {escape(transfer.transfer_id)} "
            f"{_badge(transfer.ok, transfer.incomplete, result)}</h2>"
            f"<p>started {_when(transfer.started)}, ended {_when(transfer.ended)}</p>"
            f"<h3>Outcome</h3>{_outcome(transfer)}"
            f"<h3>Briefing</h3>{_briefing(transfer.handoff)}"
            f"<h3>Timeline</h3>{_timeline(transfer)}</section>"
        )
    sections.append(
        f"<h2>SIP ladder ({len(record.sip)} messages)</h2><p>Times from the first message; "
        "click an arrow for the message's full text.</p>"
    )
    if record.sip_dropped:
        sections.append(
            f'<p class="note">{record.sip_dropped} further SIP messages of this call were not '
            "stored (the per-call limit).</p>"
        )
    sections.append(_ladder(record.sip))
    if record.sip:
        sections.append(f"<h3>SIP messages</h3>{_messages(record.sip)}")
    sections.append(
        f"<h2>Recordings</h2>{_recordings(record, max_audio_bytes, max_page_audio_bytes)}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>warmtransfer call {escape(record.call_id)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(
    records_path: str | Path,
    call_id: str,
    out: str | Path,
    *,
    max_audio_bytes: int = MAX_AUDIO_BYTES,
) -> Path:
    """Read one call from the store at `records_path` and write its page to `out`. Raises
    FileNotFoundError for a missing store, LookupError for an unknown call."""
    conn = open_for_reading(records_path)
    try:
        record = load_call(conn, call_id)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    if record is None:
        raise LookupError(f"no call {call_id!r} in {records_path}")
    target = Path(out)
    target.write_text(render_report(record, max_audio_bytes=max_audio_bytes), encoding="utf-8")
    return target
