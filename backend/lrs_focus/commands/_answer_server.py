"""`--answer-endpoint` and its companions, shared by `ask`, `serve` and `eval` (docs/scale.md)."""

from __future__ import annotations

from ._values import seconds

DEFAULT_ANSWER_TIMEOUT_S = 300.0  # remote_answer.DEFAULT_TIMEOUT_S, repeated so that --help stays light


def add_answer_server_args(p) -> None:
    p.add_argument("--answer-endpoint", default=None, metavar="URL",
                   help="Qwen-VL: send the answer stage (thumbnail, kept tiles, question) to this OpenAI-compatible "
                        "server, e.g. vLLM or SGLang at http://HOST:PORT/v1; focus stays local")
    p.add_argument("--answer-model", default=None, metavar="NAME",
                   help="with --answer-endpoint: the served model's name (default: the only one the server lists)")
    p.add_argument("--answer-api-key-file", default=None, metavar="FILE",
                   help="with --answer-endpoint: a file holding the server's API key (sent as a bearer token; "
                        "read once, never printed)")
    p.add_argument("--answer-timeout", type=seconds, default=DEFAULT_ANSWER_TIMEOUT_S, metavar="SECONDS",
                   help="with --answer-endpoint: seconds of silence from the server before giving up "
                        f"(default {DEFAULT_ANSWER_TIMEOUT_S:g}); streamed tokens reset it")


def answer_server_from_args(args):
    """The AnswerServer the options name (the key file read here, once), or None."""
    from ..remote_answer import AnswerServer

    return AnswerServer.from_options(args.answer_endpoint, args.answer_model, args.answer_api_key_file,
                                     args.answer_timeout)
