"""`bitdistill serve PACKED`: an OpenAI-compatible HTTP server for a packed model (docs/serving.md)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from .._threads import check_threads
from ..env import read_env
from ..errors import BitDistillError
from ._kv_dtype import add_kv_dtype


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a packed model over HTTP (OpenAI-compatible completions/chat, classify, metrics)",
        description="Serve a `bitdistill pack` directory with the native CPU runtime: /v1/models, "
        "/v1/completions, /v1/chat/completions (SSE streaming), /v1/classify, /health, /metrics. One engine "
        "runs requests in arrival order; a full queue answers 503 with Retry-After.",
    )
    p.add_argument("packed", help="packed model directory (bitdistill pack --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the engine (default: all cores)"
    )
    add_kv_dtype(p)
    p.add_argument("--api-key", default=read_env().api_key,
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $BITDISTILL_API_KEY)")  # fmt: skip
    p.add_argument("--model-name", default=None, help="model id clients send (default: the directory name)")
    p.add_argument("--queue-size", type=int, default=64, help="requests that may wait for the engine")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request sets none")
    p.add_argument("--max-classify-inputs", type=int, default=256, help="most texts in one /v1/classify call")
    p.add_argument("--max-prompts", type=int, default=16, help="most prompts in one /v1/completions call")
    p.add_argument("--task", default=None, help="/v1/classify defaults: this task's label words and template "
                   "(default: the task the packed model records)")  # fmt: skip
    p.add_argument("--labels", default=None, help="/v1/classify default label words, comma-separated")
    p.add_argument("--template", default=None, help="/v1/classify default template with {text}")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port or a bad address is a one-line error (uvicorn
    would log it and exit 1) and so that port 0 picks a free port we can print."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise BitDistillError(f"--host {host}: not an address this machine can listen on ({err})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise BitDistillError(f"cannot listen on {host}:{port} ({err.strerror}); is another server using it? "
                              "choose another --port") from None  # fmt: skip
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..data.task_record import recorded_task
    from ..runtime.packed import read_packed_config
    from ..serve import Limits, create_app, defaults_from_task

    if not 0 <= args.port <= 65535:
        raise BitDistillError(f"--port {args.port}: must be from 0 to 65535")
    threads = None if args.threads is None else check_threads(args.threads)
    limits = Limits(args.queue_size, args.max_body_bytes, args.max_tokens, args.default_max_tokens,
                    args.max_classify_inputs, args.max_prompts)  # fmt: skip
    limits.check()
    recorded = recorded_task(read_packed_config(args.packed), args.packed)
    classify = defaults_from_task(args.task, args.labels, args.template, recorded)
    sock = bind(args.host, args.port)
    app = create_app(args.packed, threads=threads, api_key=args.api_key or None, name=args.model_name,
                     limits=limits, classify=classify, kv_dtype=args.kv_dtype)  # fmt: skip
    if not _loopback(args.host) and not args.api_key:
        print(f"bitdistill serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              "this port can use the model", file=sys.stderr)  # fmt: skip
    model, port = app.state.model, sock.getsockname()[1]
    print(
        f"bitdistill serve: {model.name} ({model.engine.threads} threads, context {model.ctx or '?'} tokens, "
        f"chat template: {'yes' if model.chat else 'no'}) on http://{args.host}:{port}",
        file=sys.stderr,
    )
    # one process, one event loop: the engine is a single resource, extra workers would each load the model
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
