"""``cln-textgen serve``: a trained run behind HTTP, with a web page."""

import dataclasses

from cln_textgen.commands import add_checkpoint_arg, say
from cln_textgen.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub):
    from cln_textgen.serving.requests import Limits

    p = sub.add_parser(
        "serve", help="serve a trained run over HTTP (JSON API, event stream, web page)",
        description="Load a run once and answer GET /health, GET /v1/labels, POST /v1/generate, "
                    "POST /v1/generate/stream (server-sent events) and GET / (a web page). "
                    "Requests waiting are batched into the running decode (each keeps its "
                    "own options and seed: the same texts as alone). There is no "
                    "authentication: keep the default loopback address unless a proxy in front "
                    "of it controls access.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    add_checkpoint_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    defaults = Limits()
    for field in dataclasses.fields(Limits):
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=int, default=getattr(defaults, field.name), metavar="N",
                       help=f"limit (default {getattr(defaults, field.name)})")
    p.set_defaults(func=run)


def open_socket(host, port):
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port: must be from 0 to 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                        "pick another port (0: any free one)") from None
    sock.listen(128)
    return sock


def run(args):
    from cln_textgen.serving.requests import Limits

    try:
        limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}).check()
    except ValueError as e:
        raise UserError(f"--{str(e).replace('_', '-')}") from None
    sock = open_socket(args.host, args.port)

    import uvicorn

    from cln_textgen.generation.generator import TextGenerator
    from cln_textgen.serving.app import build_app
    from cln_textgen.serving.service import GenerationService

    generator = TextGenerator.from_run(args.run, args.checkpoint)
    service = GenerationService(generator, args.run, limits)
    info = service.describe()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {args.run} (step {info['step']}, labels {', '.join(info['labels'])}) "
        f"on http://{shown}:{port}/")
    if args.host not in LOOPBACK:
        say("warning: no authentication; anyone who can reach this address can use the model")
    config = uvicorn.Config(build_app(service), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
