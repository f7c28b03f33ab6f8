"""``edgekit tune``: measure the fastest runtime settings for a model on this device (edgekit.bench.tune)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def tune(
    model: Annotated[str, typer.Argument(help="GGUF file, Hugging Face checkpoint dir or repo id, or a store name.")],
    ctx: Annotated[int | None, typer.Option("--ctx", "-c", min=64, help="The context size to tune for "
                                            "(default: the model's trained context).", show_default=False)] = None,
    budget: Annotated[float, typer.Option("--budget", min=1.0, help="Time budget in seconds.")] = 120.0,
    threads: Annotated[str | None, typer.Option("--threads", "-t", help="Thread counts to try, e.g. 2,4 (default: "
                                                "physical cores, logical cores, performance cores).",
                                                show_default=False)] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the stored profile against the static defaults; "
                                       "measure nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile (and the comparison) as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Measure threads, flash attention, KV cache types and n_ubatch on this device; edgekit.load uses the result."""
    from edgekit import profile as profiles
    from edgekit.bench import tune as tuning
    from edgekit.errors import EdgekitError
    from edgekit.store import resolve

    path = resolve(model)
    if show:
        stored = profiles.read(profiles.profile_path(path))
        if stored is None:
            raise EdgekitError(f"no tuned profile for {path.name} on this machine.", f"Run `edgekit tune {model}` first.")
        _, note = profiles.lookup(path)
        _print(stored, tuning.compare(stored, tuning.static_settings(path, stored.n_ctx)), note, as_json)
        return

    import signal

    from edgekit.bench.measure import clear_stop, request_stop
    from edgekit.progress import rich_progress

    def on_sigint(signum: int, frame: object) -> None:
        # First Ctrl-C: stop at the next batch or token (llama.cpp's callbacks would swallow a
        # KeyboardInterrupt); a second one stops right away.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request_stop()

    clear_stop()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with rich_progress(enabled=not quiet and not as_json) as progress:
            result = tuning.tune(path, n_ctx=ctx, budget_s=budget, threads=_ints(threads), progress=progress)
    except tuning.TuneInterrupted as exc:
        n = len(exc.profile.measured)
        typer.echo(f"Interrupted: kept a partial profile ({n} configuration{'s' if n != 1 else ''} measured) in "
                   f"{exc.path}; run the same command again to continue.", err=True)
        raise SystemExit(130) from None  # not typer.Exit: main() would say "Nothing partial was kept"
    finally:
        signal.signal(signal.SIGINT, previous)
        clear_stop()
    _print(result, tuning.compare(result, tuning.static_settings(path, result.n_ctx)), "", as_json,
           saved=str(profiles.profile_path(path)))


def _ints(value: str | None) -> list[int] | None:
    from edgekit.errors import EdgekitError

    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise EdgekitError(f"--threads takes comma-separated integers (got {value!r})", "Example: --threads 2,4") from None


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    return format(value, spec) if isinstance(value, float) else str(value)


def _print(profile: Any, comparison: dict[str, Any], note: str, as_json: bool, saved: str | None = None) -> None:
    if as_json:
        out = {"profile": profile.as_dict(), "comparison": comparison, "note": note or None, "path": saved}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    from edgekit.bench import tables

    if note:
        typer.echo(f"Note: {note}.", err=True)
    state = " (partial: tuning was interrupted)" if profile.partial else ""
    typer.echo(f"{profile.model}: tuned for n_ctx {profile.n_ctx}{state}, depths {profile.depths}, "
               f"{len(profile.measured)} configurations in {profile.elapsed_s:.0f} s")
    rows = [[r["setting"], _fmt(r["static"]), _fmt(r["tuned"])] for r in comparison["settings"]]
    typer.echo(tables.render(("setting", "static rule", "tuned"), rows, "table").rstrip())
    rows = [[str(r["depth"]), _fmt(r["pp_static"]), _fmt(r["pp_tuned"]), _fmt(r["tg_static"]), _fmt(r["tg_tuned"])]
            for r in comparison["predicted"]]
    typer.echo("\npredicted tokens/s (fitted a + b*depth):")
    typer.echo(tables.render(("depth", "pp static", "pp tuned", "tg static", "tg tuned"), rows, "table").rstrip())
    job = comparison["job_s"]
    prompt, gen = profile.job.get("prompt_tokens"), profile.job.get("gen_tokens")
    def secs(v: float | None) -> str:
        return f"{v:.1f} s" if v is not None else "not measured"

    typer.echo(f"\nrepresentative job ({prompt}-token prompt, then {gen} tokens generated): "
               f"static rule {secs(job['static'])}, tuned {secs(job['tuned'])}")
    for line in profile.not_measured:
        typer.echo(f"not measured (budget): {line}")
    if saved:
        typer.echo(f"saved {saved}")
