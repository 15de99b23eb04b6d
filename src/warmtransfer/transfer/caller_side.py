"""The held caller's side of a transfer: progress prompts, and the keys that end the wait.

Why it is built this way:

- Both run as tasks of the phase (`scope.py`), started once the caller hears hold audio and
  ended in the very step a human accepts (`_end_hold_side`, called by the claim): no prompt is
  spoken and no key is read once the caller is being joined to a human, and the bridge never
  waits for a prompt to finish (cancelling `announce` stops the prompt at once). Every other end
  of the phase cancels them with everything else, so none outlives the transfer.
- A key that ends the wait goes through the state machine like any other end (`_stop`): the
  event (CallerCancelled, MessageRequested) is refused where the table says so, and every
  attempt is ended in the same step (a ringing target's dial is cancelled; a human being briefed
  is told, then hung up, by the attempt's own cleanup in `hunt.py`).
- What the caller asked for starts at once, in the key's own task, while the attempts clean up
  beside it: telling a human takes seconds of speech, and the caller must not wait through it.
  So "stop waiting" unholds the caller the moment the key is read (the driver's final step then
  only records it), and "leave a message" plays the prompt and records straight away.
- A progress prompt that fails is logged and prompting stops; the music goes on. It is a
  courtesy: a caller must not lose a transfer a human may be about to accept because a
  text-to-speech failed. Every other port failure ends the transfer (Reason.ERROR), as ever.
"""

from __future__ import annotations

import asyncio
import math
import uuid

from warmtransfer.consult.ports import LegGone
from warmtransfer.transfer.scope import TransferScope, logger
from warmtransfer.transfer.states import CallerCancelled, MessageRequested, State

#: How long the message prompt and tone may take, on top of the message's own maximum.
RECORD_MARGIN = 60.0


class CallerSide(TransferScope):
    """The tasks that run for the held caller: progress prompts and the keys they may press."""

    def _start_hold_side(self) -> None:
        """The caller hears hold audio from now on, in this phase: read their keys and speak
        the progress prompts (each only if the plan asks for it)."""
        if self._held_at is None:
            self._held_at = asyncio.get_running_loop().time()
        keys = self._plan.caller_keys
        tasks = []
        if keys.can_cancel or keys.can_leave_message:
            tasks.append(self._spawn(self._watch_keys, "caller.next_key"))
        if self._plan.hold_audio.progress_every is not None:
            tasks.append(self._spawn(self._progress_prompts, "caller.announce"))
        self._hold_tasks = tasks

    def _end_hold_side(self) -> None:
        """A human accepted (or the fallback answered): stop prompting and reading keys, in this
        very step; a prompt being spoken stops at once, and nobody waits for it."""
        self._cancel_once(self._hold_tasks)

    # -- progress prompts -----------------------------------------------------------------------

    async def _progress_prompts(self) -> None:
        audio = self._plan.hold_audio
        every = audio.progress_every
        assert every is not None and self._held_at is not None
        loop = asyncio.get_running_loop()
        while True:
            # At each multiple of `every` since the hold began; a prompt that outlasts the
            # interval skips a beat rather than playing back to back.
            held = loop.time() - self._held_at
            await asyncio.sleep((math.floor(held / every) + 1) * every - held)
            if self._machine.state not in (State.HUNTING, State.FALLBACK):
                return  # cannot happen (the task is cancelled first); kept as the rule
            try:
                await self._caller.announce(audio.progress_text)
            except LegGone:
                return  # the caller hung up: the caller watcher ends the transfer
            except Exception as exc:
                logger.warning(
                    "transfer %s: caller.announce raised %r; no more progress prompts",
                    self._id,
                    exc,
                )
                return

    # -- the caller's keys --------------------------------------------------------------------

    async def _watch_keys(self) -> None:
        """Read the held caller's keys; act on the plan's cancel and message keys, ignore the
        rest (they are discarded, never queued for the AI)."""
        keys = self._plan.caller_keys
        while True:
            try:
                key = await self._caller.next_key()
            except LegGone:
                return  # the caller hung up: the caller watcher ends the transfer
            action = keys.action(key)
            if action is None:
                logger.debug("transfer %s: caller key %r ignored", self._id, key)
                continue
            event = (
                CallerCancelled(at=self._clock(), key=key)
                if action == "cancel"
                else MessageRequested(at=self._clock(), key=key)
            )
            if self._end is not None or not self._machine.allows(type(event)):
                logger.debug(
                    "transfer %s: caller key %r ignored in %s", self._id, key, self._machine.state
                )
                continue
            # Ends every attempt and cancels every other task, a prompt being spoken included.
            # Nothing is awaited before the caller's own step starts: `unhold` and
            # `record_message` stop the hold audio, a prompt included, and a cancelled
            # `announce` resumes the music only if the hold audio is still its own.
            self._stop(event)
            if action == "cancel":
                await self._give_back_now()
            else:
                await self._record_message()
            return

    async def _give_back_now(self) -> None:
        """The caller stopped waiting: unhold them now, not after the humans have been told
        (the driver's final step fires Recovered, or PortFailed if this failed)."""
        self._given_back = True
        self._unhold_error = await self._bounded("caller.unhold", self._caller.unhold())

    async def _record_message(self) -> None:
        keys = self._plan.caller_keys
        path = keys.effective_messages_dir / f"message-{self._id}-{uuid.uuid4().hex[:8]}.wav"
        try:
            async with asyncio.timeout(keys.message_max_seconds + RECORD_MARGIN):
                recorded = await self._caller.record_message(
                    path,
                    prompt=keys.effective_message_prompt,
                    max_seconds=keys.message_max_seconds,
                    stop_key=keys.message_key,
                    silence_seconds=keys.message_silence_seconds,
                )
        except Exception as exc:
            logger.warning("transfer %s: caller.record_message raised %r", self._id, exc)
            self._record_error = f"caller.record_message raised {exc!r}"
            return
        if recorded is None and not self._caller.hung_up:
            self._record_error = "caller.record_message recorded nothing"
        self._recorded_message = recorded
