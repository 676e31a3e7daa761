"""The CLI's commands other than the processes (``dispatcher.cli`` registers them all).

Each module holds plain functions whose typed parameters are the command's options; they talk
to the HTTP API (``send``, ``status``), to the queue (``dlq``) or to nothing (``token``).
"""
