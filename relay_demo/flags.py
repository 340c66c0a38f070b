"""Command-line flags that ``generate`` (``relay_demo/cli.py``) and ``serve`` (``relay_demo/serve``) share,
and their readers. Apart from both commands so that the server, which the CLI imports, imports no CLI."""

from __future__ import annotations


def add_remote_flags(g) -> None:
    """The flags of models behind URLs (``relay_demo.backends.remote``)."""
    g.add_argument(
        "--teacher-url", metavar="URL", help="the teacher on a vLLM OpenAI server (http://host:port)"
    )
    g.add_argument("--student-url", metavar="URL", help="the student on a vLLM OpenAI server")
    g.add_argument(
        "--tokenizer", metavar="DIR", help="the served models' tokenizer (default: the pair's own folders)"
    )
    g.add_argument(
        "--remote-timeout-s", type=float, default=None, help="longest wait for a byte from a model server"
    )


def pair_kwargs(a) -> dict:
    """``load_pair`` keywords of the remote flags; a bad timeout fails before anything loads."""
    if a.remote_timeout_s is not None and not a.remote_timeout_s > 0:
        raise ValueError(f"--remote-timeout-s must be positive, got {a.remote_timeout_s}")
    return {
        "teacher_url": a.teacher_url,
        "student_url": a.student_url,
        "tokenizer": a.tokenizer,
        "remote_timeout_s": a.remote_timeout_s,
    }


def policy_from_args(a):
    """The policy the flags describe; each knob checked against its declared range (``relay_demo.knobs``)."""
    from .knobs import KNOBS, policy_kwargs
    from .policies import make_policy

    values = {k: getattr(a, k, None) for k in KNOBS}
    if values.get("path") is None:  # the server's namespace names it router
        values["path"] = getattr(a, "router", None)
    kwargs = policy_kwargs(a.policy, values)
    if a.policy == "router" and "path" not in kwargs:
        raise ValueError("the router policy needs --router PATH")
    return make_policy(a.policy, **kwargs)
