"""``edgekit eval``: perplexity and KL divergence of a GGUF (llama-perplexity's definitions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def eval_command(
    model: Annotated[Path, typer.Argument(help="GGUF file to evaluate.")],
    reference: Annotated[Path | None, typer.Option("--reference", "-r", help="Reference GGUF (e.g. the F16 it came from).")] = None,
    reference_logits: Annotated[Path | None, typer.Option("--reference-logits", help="Reference log-probs saved with --save-logits.")] = None,
    save_logits: Annotated[Path | None, typer.Option("--save-logits", help="Save the reference's (or, alone, this model's) log-probs here.")] = None,
    text: Annotated[Path | None, typer.Option("--text", help="UTF-8 text file to score (default: edgekit's evaluation text).")] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per chunk; the second half of each is scored.")] = 512,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Score at most this many chunks.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: the tuned profile's, else physical cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Score MODEL: perplexity, and with a reference also KLD, same-top-p and RMS Δp."""
    from edgekit.errors import EvalError
    from edgekit.evaluate import evaluate
    from edgekit.progress import rich_progress

    body = None
    if text is not None:
        try:
            body = text.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EvalError(f"Can't read the text file {text}: {exc}.", "Give a readable UTF-8 text file.") from exc
    with rich_progress(enabled=not quiet and not as_json) as progress:
        res = evaluate(model, reference=reference, reference_logits=reference_logits, save_logits=save_logits,
                       text=body, n_ctx=ctx, n_chunks=chunks, threads=threads, progress=progress)
    if as_json:
        print(json.dumps(res.as_dict(), indent=2))
        return
    typer.echo(f"{Path(res.model).name}: {res.n_chunks} chunks x {res.n_ctx} tokens, {res.n_tokens} scored")
    typer.echo(f"  perplexity      {res.perplexity:10.4f} ± {res.perplexity_err:.4f}")
    if res.kld_mean is not None:
        typer.echo(f"  reference ppl   {res.perplexity_base:10.4f}   ln(PPL/PPL_ref) {res.ln_ppl_ratio:+.5f}")
        typer.echo(f"  mean KLD        {res.kld_mean:10.6f} ± {res.kld_err:.6f}   (99%: {res.kld_p99:.6f}, max {res.kld_max:.4f})")
        typer.echo(f"  same top p      {100 * res.same_top_p:9.3f}% ± {100 * res.same_top_p_err:.3f}%")
        typer.echo(f"  RMS Δp          {100 * res.rms_dp:9.3f}% ± {100 * res.rms_dp_err:.3f}%")
    if save_logits is not None:
        typer.echo(f"  reference log-probs saved to {save_logits}")
