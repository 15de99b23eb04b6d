"""A voice agent with a `transfer_to_human` tool that warm-transfers the caller.

The agent and its tool are the same in both modes; `WarmTransferTask` picks its backend when it
starts.

On a LiveKit server (Cloud for merge="move"; any server for merge="same_room"):

    export LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export LIVEKIT_SIP_OUTBOUND_TRUNK=ST_xxx HUMAN_AGENT_NUMBER=+15105550123
    python examples/livekit_agent.py dev

On warmtransfer's embedded SIP engine, with no LiveKit server: the engine answers calls on
`--port`, the agent talks with offline speech (piper, pocketsphinx, webrtcvad) and an
OpenAI-compatible LLM, and `transfer_to_human` dials `--human` over SIP:

    pip install livekit-plugins-openai
    export OPENAI_API_KEY=...              # and OPENAI_BASE_URL for another compatible server
    export OPENAI_MODEL=gpt-4o-mini        # optional
    python examples/livekit_agent.py sip --port 5070 --human sip:alice@192.0.2.10

The destination comes from the app's configuration, never from the model: the task's default
plan allows exactly that number or URI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, RunContext, cli
from livekit.agents.llm import function_tool

from warmtransfer.livekit import TransferFailedError, WarmTransferTask, default_plan

MERGE = os.environ.get("WARMTRANSFER_MERGE", "move")  # "same_room" on self-hosted servers

server = AgentServer()
log = logging.getLogger("livekit_agent")


class Receptionist(Agent):
    def __init__(self, human: str) -> None:
        super().__init__(instructions="You are a helpful receptionist. Offer a human if asked.")
        self.human = human

    async def on_enter(self) -> None:
        self.session.generate_reply(instructions="Greet the caller and offer your help.")

    @function_tool
    async def transfer_to_human(self, context: RunContext) -> str:
        """Transfer the caller to a human agent."""
        try:
            result = await WarmTransferTask(
                self.human,
                chat_ctx=self.chat_ctx,
                merge="same_room" if MERGE == "same_room" else "move",
            )
        except TransferFailedError as exc:
            return f"Transfer failed ({exc.reason.value}); apologise and keep helping."
        # On LiveKit the agent is still in the room; on the SIP engine it has already left.
        return f"Connected to {result.human_agent_identity}; say goodbye and leave."


# -- on a LiveKit server -----------------------------------------------------------------------


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession()  # configure stt/llm/tts here (e.g. inference)
    await session.start(agent=Receptionist(os.environ["HUMAN_AGENT_NUMBER"]), room=ctx.room)


# -- on warmtransfer's embedded SIP engine -------------------------------------------------------


class SetupError(Exception):
    """What is missing to run, said so that the user can fix it."""


def llm_from_env() -> Any:
    """An OpenAI-compatible LLM from the environment, or a `SetupError` saying what to set."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise SetupError(
            "SIP mode needs an LLM for the agent: set OPENAI_API_KEY (and OPENAI_BASE_URL for"
            " an OpenAI-compatible server other than OpenAI's, OPENAI_MODEL to choose a model)."
            " The speech is offline (piper, pocketsphinx); the LLM is not."
        )
    try:
        from livekit.plugins import openai
    except ImportError as exc:
        raise SetupError(
            "SIP mode talks to the LLM through livekit-plugins-openai:"
            " pip install livekit-plugins-openai"
        ) from exc
    return openai.LLM(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        api_key=key,
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
    )


async def run_sip(host: str, port: int, human: str) -> None:
    """Answer every inbound call with the receptionist, until interrupted."""
    from warmtransfer.engine import Engine
    from warmtransfer.livekit.plugins import SttAdapter, TtsAdapter
    from warmtransfer.livekit.sip_io import run_agent_on_call
    from warmtransfer.sip.call import IncomingCall
    from warmtransfer.speech.stt import PocketsphinxSTT
    from warmtransfer.speech.tts import PiperTTS

    agent_llm = llm_from_env()
    default_plan(human)  # a malformed URI fails now, not on the first transfer
    tts = PiperTTS()
    stt = PocketsphinxSTT()  # one decoder thread, shared by every call

    async def take(engine: Engine, call: IncomingCall) -> None:
        await call.ring()
        await call.answer()
        leg = engine.caller_leg(call)  # the leg the transfer holds: hold mutes the agent
        # the session closes itself when the caller hangs up or is handed over to the human
        await run_agent_on_call(
            engine,
            leg,
            Receptionist(human),
            stt=SttAdapter(stt),
            tts=TtsAdapter(tts),
            llm=agent_llm,
        )
        log.info("agent on call %s", call.call_id)

    try:
        async with Engine(host, port, tts=tts) as engine:
            log.info("answering calls at %s; humans are dialled at %s", engine.uri, human)
            while True:
                engine.spawn(take(engine, await engine.next_call()))
    finally:
        stt.close()


def sip_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livekit_agent.py sip",
        description="Run the agent on inbound calls to warmtransfer's embedded SIP engine.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5060, help="SIP port (UDP)")
    parser.add_argument("--human", required=True, help="the human's SIP URI, e.g. sip:alice@pbx")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(run_sip(args.host, args.port, args.human))
    except SetupError as exc:
        print(f"livekit_agent.py sip: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["sip"]:
        sys.exit(sip_main(sys.argv[2:]))
    cli.run_app(server)
