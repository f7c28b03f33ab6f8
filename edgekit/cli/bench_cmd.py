"""``edgekit bench``: measure models on this device, and compare, plot and import results.

``edgekit bench MODEL...`` runs the benchmark (the ``run`` subcommand is the
default); ``compare``, ``plot`` and ``import`` work on the local results store.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from edgekit.errors import BenchError

if TYPE_CHECKING:
    from edgekit.bench.store import Filters


class _DefaultRun(TyperGroup):
    """A group whose default subcommand is ``run``: ``edgekit bench m.gguf`` = ``edgekit bench run m.gguf``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(cls=_DefaultRun, no_args_is_help=True, add_completion=False,
                        help="Measure speed and latency on this device; compare devices (run is the default).")


def _ints(value: str | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise BenchError(f"{what} must be comma-separated integers (got {value!r})", f"Example: {what} 0,4096") from None


def _strs(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _onoff(value: str | None) -> tuple[bool, ...] | None:
    if value is None:
        return None
    table = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}
    try:
        return tuple(table[v.strip().lower()] for v in value.split(","))
    except KeyError:
        raise BenchError(f"--flash-attn takes on/off values (got {value!r})", "Example: --flash-attn on,off") from None


FORMATS = "table|json|jsonl|csv|md"


@bench_app.command("run")
def run_cmd(
    models: Annotated[list[str], typer.Argument(help="GGUF files (or model names edgekit can load).")],
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="quick | standard | long | llama-bench: sets the "
                                              "defaults below. Default: llama-bench's behaviour (depth 0, no chat "
                                              "turn) when -p, -n or -d is given, else quick.")] = None,
    n_prompt: Annotated[str | None, typer.Option("-p", "--n-prompt", help="Prompt lengths for pp tests, e.g. 512.")] = None,
    n_gen: Annotated[str | None, typer.Option("-n", "--n-gen", help="Token counts for tg tests, e.g. 128.")] = None,
    depth: Annotated[str | None, typer.Option("-d", "--depth", help="Context depths, e.g. 0,4096,16384.")] = None,
    kv_cache: Annotated[str | None, typer.Option("--kv-cache", "-k", help="KV types, e.g. f16,q8_0,q8_0/f16 (K/V). Default: the tuned profile's, else f16/f16.")] = None,
    threads: Annotated[str | None, typer.Option("--threads", "-t", help="Thread counts (default: the tuned profile's, else physical cores).")] = None,
    flash_attn: Annotated[str | None, typer.Option("--flash-attn", help="on,off (default: the tuned profile's, else on).")] = None,
    reps: Annotated[int | None, typer.Option("-r", "--repetitions", help="Repetitions per test (after a warm-up).")] = None,
    n_batch: Annotated[int | None, typer.Option("-b", "--n-batch", help="Logical batch size (default: load's, 512).",
                                                show_default=False)] = None,
    n_ubatch: Annotated[int | None, typer.Option("--n-ubatch", help="Physical batch size (default: the tuned "
                                                 "value, else 512).", show_default=False)] = None,
    gpu_layers: Annotated[str, typer.Option("--gpu-layers", help="Layers to offload: auto (all where Metal/GPU is built in) or a number.")] = "auto",
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Also time a chat turn (TTFT, end-to-end); "
                                               "default: on for the suites, off like llama-bench.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Append records to this JSONL file as they finish.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMATS)] = "table",
    vs_llama_bench: Annotated[str | None, typer.Option("--vs-llama-bench", help="Path of llama.cpp's llama-bench: run it interleaved, report the ratio.")] = None,
    vs_rounds: Annotated[int, typer.Option("--vs-rounds", help="Alternating rounds (ours, llama-bench) per test.")] = 2,
    engine: Annotated[str, typer.Option("--engine", help="edgekit (default) or llama-cpp-python (no wrapper, for comparison).")] = "edgekit",
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="One untimed run before the repetitions.")] = True,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Add the results to the local results store.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Benchmark MODEL(s): pp and tg at each depth (like llama-bench), a chat turn, memory and roofline."""
    from edgekit.bench import records
    from edgekit.bench.runner import default_suite, plan, run, suite_grid
    from edgekit.bench.store import Store
    from edgekit.progress import rich_progress

    if fmt not in records.FORMATS:
        raise BenchError(f"unknown format {fmt!r}", f"Use one of: {FORMATS}.")
    kv = _strs(kv_cache)
    grid = suite_grid(
        models, suite or default_suite(n_prompt, n_gen, depth), n_prompt=_ints(n_prompt, "-p"), n_gen=_ints(n_gen, "-n"), depths=_ints(depth, "-d"),
        kv_cache=kv, threads=_ints(threads, "--threads"), flash_attn=_onoff(flash_attn), reps=reps,
        n_batch=n_batch, n_ubatch=n_ubatch, chat=chat, engine=engine, warmup=warmup,
        llama_bench=vs_llama_bench, vs_rounds=vs_rounds,
        gpu_layers=gpu_layers if gpu_layers == "auto" else _ints(gpu_layers, "--gpu-layers")[0],
    )
    if vs_llama_bench:
        from edgekit.bench.llama_bench import find_binary

        find_binary(vs_llama_bench)
    _, skipped = plan(grid)  # validates models and settings before anything loads
    for line in skipped:
        typer.echo(f"skipped: {line}", err=True)

    import signal

    from edgekit.bench.measure import clear_stop, request_stop

    def on_sigint(signum: int, frame: object) -> None:
        # First Ctrl-C: stop cleanly at the next batch/token (see measure.request_stop); second: right away.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request_stop()

    done: list[dict] = []
    db = Store() if store else None
    clear_stop()
    previous = signal.signal(signal.SIGINT, on_sigint)
    out = open(output, "a") if output else None  # closed in finally; appended per record
    try:
        with rich_progress(enabled=not quiet) as progress:
            for rec in run(grid, progress=progress):
                done.append(rec)
                if out is not None:
                    out.write(records.format_records([rec], "jsonl"))
                    out.flush()
                if db is not None:
                    db.add([rec])
    except KeyboardInterrupt:
        if done:
            sys.stdout.write(records.format_records(done, fmt))
        where = f" in {output}" if output else ""
        where += " and the results store" if db is not None and where else (" in the results store" if db else "")
        typer.echo(f"Interrupted: kept {len(done)} completed result(s){where}.", err=True)
        raise SystemExit(130) from None  # not typer.Exit: main() would add "Nothing partial was kept"
    finally:
        signal.signal(signal.SIGINT, previous)
        clear_stop()
        if out is not None:
            out.close()
        if db is not None:
            db.close()
    sys.stdout.write(records.format_records(done, fmt))


def _filters(device: str | None, model: str | None, test: str | None, engine: str | None, kv: str | None,
             depth: int | None, threads: int | None, since: str | None) -> Filters:
    from edgekit.bench.store import Filters

    return Filters(device=device, model=model, test=test, engine=engine, kv=kv, depth=depth, threads=threads, since=since)


DeviceOpt = Annotated[str | None, typer.Option("--device", help="Device id prefix, CPU or board name (substring).")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model file name or type (substring).")]
TestOpt = Annotated[str | None, typer.Option("--test", help="pp | tg | chat")]
EngineOpt = Annotated[str | None, typer.Option("--engine", help="edgekit | llama-bench | llama-cpp-python")]
KvOpt = Annotated[str | None, typer.Option("--kv-cache", "-k", help="KV type, e.g. q8_0 or q8_0/f16.")]
DepthOpt = Annotated[int | None, typer.Option("--depth", "-d", help="Context depth.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="Thread count.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Only results measured on or after this date (YYYY-MM-DD).")]


@bench_app.command("compare")
def compare_cmd(
    device: DeviceOpt = None, model: ModelOpt = None, test: TestOpt = None, engine: EngineOpt = None,
    kv_cache: KvOpt = None, depth: DepthOpt = None, threads: ThreadsOpt = None, since: SinceOpt = None,
    by: Annotated[str, typer.Option("--by", help="Columns: device | engine | kv | threads | model | flash_attn.")] = "device",
    baseline: Annotated[str | None, typer.Option("--baseline", help="Column the ratios are relative to (substring; default: the first).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|md|csv|json")] = "table",
) -> None:
    """Compare stored results across devices (or engines, KV types, threads...), with ratios."""
    from edgekit.bench.store import Store, compare, format_compare

    with Store() as db:
        recs = db.query(_filters(device, model, test, engine, kv_cache, depth, threads, since))
    if not recs:
        raise BenchError("no stored benchmark results match", "Run edgekit bench MODEL, or import a JSONL file.")
    sys.stdout.write(format_compare(compare(recs, by=by, baseline=baseline), fmt))


@bench_app.command("plot")
def plot_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNG files.")] = Path("bench-plots"),
    device: DeviceOpt = None, model: ModelOpt = None, engine: EngineOpt = None, kv_cache: KvOpt = None,
    threads: ThreadsOpt = None, since: SinceOpt = None,
) -> None:
    """Write PNG charts of stored results: tok/s vs depth per device and type, tok/s vs model size."""
    from edgekit.bench.plot import plot
    from edgekit.bench.store import Store

    with Store() as db:
        recs = db.query(_filters(device, model, None, engine, kv_cache, None, threads, since))
    for path in plot(recs, out):
        typer.echo(f"wrote {path}")


@bench_app.command("long-prompt")
def long_prompt_cmd(
    model: Annotated[str, typer.Argument(help="GGUF file (or a model name edgekit can load).")],
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Context size; the prompt fills it but for --gen + 16 tokens.")] = 32768,
    kv_cache: Annotated[str, typer.Option("--kv-cache", "-k", help="KV cache type: auto (what edgekit.load picks), q8_0, f16 or q8_0/f16 (K/V).")] = "auto",
    gen: Annotated[int, typer.Option("--gen", "-n", help="Tokens to generate after the prompt.")] = 64,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: the tuned profile's, else physical cores).",
                                                show_default=False)] = None,
    llama_bench: Annotated[str | None, typer.Option("--llama-bench", help="Path of llama.cpp's llama-bench: run the same job with it afterwards, report the ratio.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Time one prompt that fills the context: first token, decode speed at that depth, peak memory vs the plan."""
    import json

    from edgekit.bench.long_prompt import long_prompt

    res = long_prompt(model, n_ctx=ctx, kv_cache=kv_cache, n_gen=gen, threads=threads, llama_bench_path=llama_bench)
    if json_out:
        print(json.dumps(res, indent=1))
        return
    ek = res["edgekit"]
    typer.echo(f"{Path(ek['model']).name}: {ek['n_prompt']}-token prompt + {ek['n_gen']} generated, "
               f"ctx {ek['n_ctx']}, KV {ek['type_k']}/{ek['type_v']}, {ek['threads']} threads")
    typer.echo(f"  time to first token  {ek['ttft_s']:9.2f} s   (prefill {ek['prefill_tps']:.1f} tok/s)")
    typer.echo(f"  decode at that depth {ek['decode_tps']:9.2f} tok/s")
    typer.echo(f"  peak RSS             {ek['peak_rss_mib']:9.0f} MiB (plan {ek['plan_mib']:.0f} MiB, "
               f"x{ek['peak_over_plan']:.2f})")
    typer.echo(f"  wall                 {ek['wall_s']:9.2f} s")
    if "llama_bench" in res:
        lb = res["llama_bench"]
        typer.echo(f"  llama-bench wall     {lb['wall_s']:9.2f} s   (edgekit's speed: x{lb['edgekit_speed_ratio']:.3f} of it)")


@bench_app.command("import")
def import_cmd(
    files: Annotated[list[Path], typer.Argument(help="JSONL files written by edgekit bench --output (e.g. on a Pi).")],
) -> None:
    """Merge results measured elsewhere into the local results store."""
    from edgekit.bench.store import Store

    with Store() as db:
        for path in files:
            added, present = db.import_jsonl(path)
            typer.echo(f"{path}: {added} new record(s), {present} already in the store")
