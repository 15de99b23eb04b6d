"""A voice agent with a `transfer_to_human` tool that warm-transfers the caller.

Run against a LiveKit server (Cloud for merge="move"; any server for merge="same_room"):

    export LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export LIVEKIT_SIP_OUTBOUND_TRUNK=ST_xxx HUMAN_AGENT_NUMBER=+15105550123
    python examples/livekit_agent.py dev

The destination comes from the app's configuration, never from the model: the task's default
plan allows exactly that number.
"""

from __future__ import annotations

import os

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, RunContext, cli
from livekit.agents.llm import function_tool

from warmtransfer.livekit import TransferFailedError, WarmTransferTask

MERGE = os.environ.get("WARMTRANSFER_MERGE", "move")  # "same_room" on self-hosted servers

server = AgentServer()


class Receptionist(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a helpful receptionist. Offer a human if asked.")

    @function_tool
    async def transfer_to_human(self, context: RunContext) -> str:
        """Transfer the caller to a human agent."""
        try:
            result = await WarmTransferTask(
                os.environ["HUMAN_AGENT_NUMBER"],
                chat_ctx=self.chat_ctx,
                merge="same_room" if MERGE == "same_room" else "move",
            )
        except TransferFailedError as exc:
            return f"Transfer failed ({exc.reason.value}); apologise and keep helping."
        return f"Connected to {result.human_agent_identity}; say goodbye and leave."


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    # TODO(sip_io): for calls on warmtransfer's embedded SIP engine instead of LiveKit rooms,
    # build the session on `warmtransfer.livekit.AudioInputFromLeg` / `AudioOutputToLeg`
    # (session.input.audio / session.output.audio) and use the SIP backend's transfer ports.
    session: AgentSession = AgentSession()  # configure stt/llm/tts here (e.g. inference)
    await session.start(agent=Receptionist(), room=ctx.room)


if __name__ == "__main__":
    cli.run_app(server)
