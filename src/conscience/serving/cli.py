"""``conscience serve``: the OpenAI-compatible server (registered by ``conscience.cli``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConscienceError
from .config import ON_ERROR, ON_UNRESOLVED, SERVE_ACTIONS, UPSTREAM_TOP_LOGPROBS_FLOOR, ServeConfig
from .redact import redact

_SERVE_KEYS = ("host", "port", "on_error", "on_unresolved", "review_timeout", "model_name", "upstream", "upstream_model",
               "upstream_timeout", "upstream_top_logprobs", "max_body_bytes",
               "max_prompt_tokens", "max_tokens", "max_logprobs", "max_batch", "learn_dir", "learn_every",
               "learn_steps", "learn_margin", "learn_lora_r", "probe_size")


def register(subparsers) -> None:
    from ..cli import add_conscience_options

    p = subparsers.add_parser(
        "serve", conflict_handler="resolve",
        help="an OpenAI-compatible chat server with the conscience in front of the model",
        description="Serve /v1/chat/completions with every draft reviewed by the model's frozen copy. "
                    "Streams start only after the review.")
    add_conscience_options(p)
    # The conscience's use (chat/content/code, --mode elsewhere) is --use here: --mode is the
    # deprecated name of --action, which this group's option replaces (conflict_handler="resolve").
    p.add_argument("--use", dest="mode", choices=["chat", "content", "code"],
                   help="what the model is used for (the drafting system prompt and framings)")
    s = p.add_argument_group("server")
    s.add_argument("--action", choices=SERVE_ACTIONS,
                   help="what the server does with a verdict: revise (default): answer with the best reviewed "
                        "candidate; block: withhold flagged drafts (finish_reason content_filter); monitor: only "
                        "annotate")
    s.add_argument("--mode", dest="deprecated_mode", choices=SERVE_ACTIONS,
                   help="deprecated alias of --action, kept for one release; use --action")
    s.add_argument("--on-error", choices=ON_ERROR, default="closed",
                   help="closed: a failed or timed-out review withholds the draft; open: release it marked unchecked")
    s.add_argument("--on-unresolved", choices=ON_UNRESOLVED, default="block",
                   help="--action revise, when every candidate stays flagged: block withholds the answer "
                        "(finish_reason content_filter); release sends the best one marked unresolved")
    s.add_argument("--review-timeout", type=float, default=30.0, help="seconds a review may take")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (visible in ps: prefer "
                                     "--api-key-file or the CONSCIENCE_API_KEY environment variable)")
    s.add_argument("--api-key-file", help="read the API key from this file (its first line)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name this server answers besides its bind address (repeatable; '*' for any)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (scheme://host:port) allowed to call the API from a browser (repeatable)")
    s.add_argument("--no-conscience", dest="conscience", action="store_false",
                   help="serve the bare model (a baseline, or an upstream with logprobs for another server)")
    s.add_argument("--model-name", help="the model id reported to clients")
    s.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model name requests may use (repeatable); other names get 404 model_not_found")
    s.add_argument("--expose-trace", action="store_true",
                   help="include the draft and the alternatives in each response's conscience object")
    s.add_argument("--upstream", help="URL of an OpenAI-compatible server that drafts and reviews (log-probs)")
    s.add_argument("--upstream-model", help="model id at the upstream (default: its first listed model)")
    s.add_argument("--upstream-api-key", help="visible in ps: prefer --upstream-api-key-file or "
                                              "CONSCIENCE_UPSTREAM_API_KEY")
    s.add_argument("--upstream-api-key-file", help="read the upstream's API key from this file (its first line)")
    s.add_argument("--upstream-timeout", type=float, default=120.0)
    s.add_argument("--upstream-top-logprobs", type=int, default=20,
                   help=f"top log-probs asked for per review (at least {UPSTREAM_TOP_LOGPROBS_FLOOR})")
    s.add_argument("--max-body-bytes", type=int, default=1_000_000)
    s.add_argument("--max-prompt-tokens", type=int, default=4096)
    s.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask for")
    s.add_argument("--max-logprobs", type=int, default=20, help="the largest top_logprobs a request may ask for")
    s.add_argument("--max-batch", type=int, default=8, help="concurrent requests drafted and reviewed together")
    learn = p.add_argument_group("learning from traffic")
    learn.add_argument("--learn", action="store_true",
                       help="record preference pairs from flagged drafts and update a LoRA adapter in the background")
    learn.add_argument("--learn-dir", default="conscience-learn", help="pairs, adapters and state live here")
    learn.add_argument("--learn-every", type=int, default=32, help="pairs between two updates")
    learn.add_argument("--learn-steps", type=int, default=20)
    learn.add_argument("--learn-margin", type=float, default=0.1,
                       help="an alternative must beat the flagged draft's score by this much")
    learn.add_argument("--learn-lora-r", type=int, default=8)
    learn.add_argument("--probe-size", type=int, default=8, help="EM probe questions asked before a swap")
    p.set_defaults(handler=cmd_serve)


def read_key(value: str | None, path: str | None, env: str, option: str) -> str | None:
    """A secret from the option, a file or the environment, in that order (one source only)."""
    if value is not None and path is not None:
        raise ConscienceError(f"serve: give {option} or {option}-file, not both")
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConscienceError(f"serve: cannot read {option}-file {path}: {exc.__class__.__name__}") from None
        if not lines or not lines[0].strip():
            raise ConscienceError(f"serve: {option}-file {path} is empty")
        return lines[0].strip()
    if value is not None:
        return value
    return os.environ.get(env) or None


def serve_action(args: argparse.Namespace) -> str:
    """``--action``, or the deprecated ``--mode`` (with a warning), or ``revise``."""
    if args.deprecated_mode is None:
        return args.action or "revise"
    if args.action is not None and args.action != args.deprecated_mode:
        raise ConscienceError(f"serve: --action {args.action} and --mode {args.deprecated_mode} disagree "
                              "(--mode is the deprecated name of --action: give only --action)")
    print(f"[conscience] warning: serve --mode is deprecated and will be removed in the next release: "
          f"use --action {args.deprecated_mode}", file=sys.stderr, flush=True)
    return args.deprecated_mode


def serve_config(args: argparse.Namespace) -> ServeConfig:
    values = {k: getattr(args, k) for k in _SERVE_KEYS if getattr(args, k, None) is not None}
    values.update(action=serve_action(args), conscience=args.conscience, expose_trace=args.expose_trace,
                  learn=args.learn,
                  api_key=read_key(args.api_key, args.api_key_file, "CONSCIENCE_API_KEY", "--api-key"),
                  upstream_api_key=read_key(args.upstream_api_key, args.upstream_api_key_file,
                                            "CONSCIENCE_UPSTREAM_API_KEY", "--upstream-api-key"),
                  model_aliases=tuple(args.model_alias), allowed_hosts=tuple(args.allowed_host),
                  cors_origins=tuple(args.cors_origin))
    try:
        return ServeConfig(**values)
    except ValueError as exc:
        raise ConscienceError(f"serve: {exc}") from None


def cmd_serve(args) -> int:
    from ..cli import conscience_config
    from .backends import build_backend

    cfg = serve_config(args)
    conscience_cfg = conscience_config(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConscienceError("serving needs FastAPI and uvicorn: pip install 'emergent-alignment[serve]'") from None
    from .app import create_app

    backend = build_backend(cfg, conscience_cfg)
    learner = None
    if cfg.learn:
        from .learn import build_learner

        learner = build_learner(cfg, conscience_cfg, backend)
    app = create_app(cfg, backend, learner)
    name = cfg.model_name or ("upstream model" if cfg.upstream else conscience_cfg.model)
    source = redact(cfg.upstream or conscience_cfg.model)
    print(f"[conscience] serving {name} ({backend.kind}: {source}) on http://{cfg.host}:{cfg.port} action={cfg.action} "
          f"on_error={cfg.on_error} on_unresolved={cfg.on_unresolved} conscience={'on' if cfg.conscience else 'off'}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    return 0
