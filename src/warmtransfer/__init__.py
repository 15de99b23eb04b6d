"""warmtransfer: warm transfers of phone calls from an AI voice agent to a human, over SIP."""

__version__ = "0.1.0"
