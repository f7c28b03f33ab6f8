"""Speculative decoding on grounded and open-ended prompts: offline cost model, then wall clock.

Run:
  python -m edgekit.bench.studies.speculation trace [--model GGUF] [--draft GGUF] [-n 96] [--out FILE]
  python -m edgekit.bench.studies.speculation simulate TRACE [--cost smollm2|qwen05b]
  python -m edgekit.bench.studies.speculation run [--model GGUF] [--draft GGUF] [--mode auto] [--rounds 3]
  python -m edgekit.bench.studies.speculation build     # SmolLM2 F16 / Q8_0 / Q4_0 from its real weights

``trace`` decodes every prompt of ``speculation_prompts.json`` greedily (plain) and writes the
prompt and answer tokens; with ``--draft`` it also records, at every answer position, the draft
model's greedy guess and its probability given the true text (one batched pass). ``simulate``
replays :class:`edgekit.runtime.speculative.Speculation` on a trace and prices each step with a
verification cost curve: deterministic, no timing, so rules can be compared offline.
``run`` times plain and speculative greedy decoding interleaved over rounds (wall clock,
decode tokens/s from Stats), checks the texts are identical, and prints per-set ratios and
drafted/accepted tokens. The default model is SmolLM2-135M-Instruct's real Q4_1 weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

PROMPTS = Path(__file__).with_name("speculation_prompts.json")
SETS = ("grounded", "open")


def prompts(limit: int | None = None) -> tuple[str, list[dict[str, str]]]:
    """(system prompt, [{"set", "name", "prompt"}]) from the prompt file; at most ``limit`` per set."""
    data = json.loads(PROMPTS.read_text(encoding="utf-8"))
    items = data["prompts"]
    if limit is not None:
        items = [p for s in SETS for p in [q for q in items if q["set"] == s][:limit]]
    return data["system"], items


def _messages(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _default_model() -> str:
    from edgekit.samples.assets import smollm2_gguf

    return str(smollm2_gguf())


# -- trace -------------------------------------------------------------------------------------------------

def draft_guesses(draft: Any, tokens: list[int], first: int) -> tuple[list[int], list[float]]:
    """The draft model's greedy guess and its probability for each of ``tokens[first:]``, given the true text."""
    import numpy as np

    from edgekit import _llama

    L = _llama.lib()
    draft.reset()
    ctx = draft.llama_context
    n_vocab = draft.n_vocab
    guesses: list[int] = []
    probs: list[float] = []
    batch = _llama.Batch(draft.n_batch)
    try:
        for start in range(0, len(tokens) - 1, draft.n_batch):
            chunk = tokens[start : min(start + draft.n_batch, len(tokens) - 1)]
            if _llama.decode(ctx, batch.fill(chunk, start)) != 0:
                raise RuntimeError("the draft model could not evaluate the trace")
            for i in range(len(chunk)):
                if start + i + 1 < first:
                    continue
                row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                top = int(row.argmax())
                probs.append(float(1.0 / np.exp(row - row[top]).sum()))
                guesses.append(top)
    finally:
        batch.free()
        draft.reset()
    return guesses, probs


def trace(model: str, draft: str | None, max_tokens: int, threads: int | None, out_path: Path | None,
          limit: int | None = None) -> dict[str, Any]:
    """Plain greedy answers (tokens) for every prompt, plus the draft model's guesses if ``draft``.

    With ``out_path``, the trace is written after every prompt and a run resumes where a
    previous one with the same settings stopped.
    """
    import edgekit

    system, items = prompts(limit)
    out: dict[str, Any] = {"model": Path(model).name, "draft": Path(draft).name if draft else None,
                           "max_tokens": max_tokens, "prompts": []}
    if out_path is not None and out_path.exists():
        old = json.loads(out_path.read_text(encoding="utf-8"))
        if all(old.get(k) == out[k] for k in ("model", "draft", "max_tokens")):
            out = old
    done = {row["name"] for row in out["prompts"]}
    grounded = [item for item in items if item["set"] == "grounded"]
    other = [item for item in items if item["set"] != "grounded"]
    # Alternate the sets, so a trace cut short still covers both.
    items = [item for pair in zip(grounded, other, strict=False) for item in pair] + grounded[len(other):] \
        + other[len(grounded):]
    with edgekit.load(model, n_ctx=4096, threads=threads, speculative="off", seed=1) as m:
        dm = edgekit.load(draft, n_ctx=4096, threads=threads, speculative="off") if draft else None
        try:
            for item in items:
                if item["name"] in done:
                    continue
                prompt = m.chat_tokens(_messages(system, item["prompt"]))
                m.reset()
                c = m.generate(prompt, temperature=0, max_tokens=max_tokens)
                row = {**item, "prompt_tokens": prompt, "output": c.tokens}
                if dm is not None:
                    row["guess"], row["guess_p"] = draft_guesses(dm, prompt + c.tokens, len(prompt))
                out["prompts"].append(row)
                if out_path is not None:
                    out_path.write_text(json.dumps(out), encoding="utf-8")
        finally:
            if dm is not None:
                dm.close()
    return out


# -- simulate ----------------------------------------------------------------------------------------------

class TraceDrafter:
    """A draft model replayed from a trace: its greedy guesses given the true text, stopping below ``p_min``,
    drafted when the engine's rule (:func:`edgekit.runtime.draft_cost.plan`) would draft, priced as it prices.

    Past the first wrong guess the real draft would continue from its own text, which the
    trace doesn't hold; those tokens are rejected anyway, so they only cost verification
    and are modelled as continuing (the pessimistic case). ``costs`` (the draft's prices and
    acceptance rates) and ``cache`` (the tokens whose KV the draft model holds) are shared by the
    prompts of a run, as the real draft model keeps them across calls. :attr:`extra` is the time the
    draft spent beyond one step per drafted token: catching up on the text before its first guess.
    """

    free = False

    def __init__(self, prompt: list[int], output: list[int], guess: list[int], guess_p: list[float], costs: Any,
                 p_min: float, cache: list[int]) -> None:
        from edgekit.runtime.draft import ModelDrafter

        self.level, self.priors, self.streaks = ModelDrafter.level, ModelDrafter.priors, ModelDrafter.streaks
        self.rates = costs.rates
        self.text = list(prompt)
        self._n_prompt = len(prompt)
        self._truth, self._guess, self._p = output, guess, guess_p
        self._costs, self.cost, self.p_min = costs, costs.fixed, p_min
        self._cache = cache
        self._dropped = False
        self.extra = 0.0

    def extend(self, tokens: Any) -> None:
        self.text.extend(tokens)

    def append(self, tok: int) -> None:
        self.text.append(tok)

    def _pending(self) -> tuple[int, int]:
        from edgekit import _llama

        n = _llama.shared_prefix(self._cache, self.text)
        return n, max(1, len(self.text) - n)

    def plan(self, limit: int, p_first: float, p_next: float, cost: Any) -> int:
        from edgekit.runtime import draft_cost

        if self._dropped:
            return 0
        k = draft_cost.plan(self._costs, self._pending()[1], limit, p_first, p_next, cost,
                            emitted=len(self.text) - self._n_prompt)
        self._dropped = k < 0
        return max(k, 0)

    def draft(self, k: int) -> list[int]:
        out: list[int] = []
        j = len(self.text) - self._n_prompt  # answer index of the token to guess
        on_track = True
        while len(out) < k and j < len(self._guess):
            if on_track:
                if self._p[j] < self.p_min:
                    break
                out.append(self._guess[j])
                on_track = self._guess[j] == self._truth[j]
            else:
                out.append(-1)
            j += 1
        shared, pending = self._pending()
        self._costs.guesses += len(out)
        self.extra += self._costs.catch_up(pending, None) - (self.cost if out else 0.0)
        self._cache[shared:] = self.text[shared:] + out[:-1]  # it evaluates every guess but the last
        return out


def simulate(data: dict[str, Any], cost_name: str | dict[int, float], draft_cost: float,
             p_min: float, draft_token: float | None = None, rounds: int = 1) -> dict[str, Any]:
    """Per set: cost-model speed ratio vs plain, acceptance, drafted and accepted tokens.

    The prompts are replayed in the order ``run`` answers them (the prompt file's), ``rounds`` times, with
    the draft's rates and cache kept throughout, as ``run`` keeps one draft model; drafted and accepted
    tokens are counted in the first round, as ``run`` counts them.

    ``cost_name``: "smollm2" or "qwen05b" (the curves in :mod:`edgekit.runtime.speculative`), or a
    measured curve {batch size: time relative to one token}, such as the one ``run`` reports.
    ``draft_cost``: a draft step, and ``draft_token`` each further token of the draft's batches (default:
    the rule's prior), in target steps.
    """
    from edgekit.runtime import speculative as sp
    from edgekit.runtime.draft_cost import DraftCosts

    if isinstance(cost_name, dict):
        cost = sp.CostCurve(cost_name, timed=False)  # sizes past the measured ones scaled by the curve's own shape
    else:
        cost = sp.CostCurve(sp.SMOLLM2_COST if cost_name == "smollm2" else sp.QWEN05B_COST, timed=False)
    costs = DraftCosts(draft_cost)
    costs.fixed, costs.fixed_token = draft_cost, draft_token
    cache: list[int] = []
    per_set: dict[str, dict[str, Any]] = {s: {"plain": 0.0, "spec": 0.0, "drafted": 0, "accepted": 0, "ratios": []}
                                          for s in SETS}
    order = [item["name"] for item in prompts()[1]]
    rows = sorted(data["prompts"], key=lambda row: order.index(row["name"]) if row["name"] in order else len(order))
    for r, row in enumerate(rows * rounds):
        output = row["output"]
        if len(output) < 2:
            continue
        if "guess" in row:
            drafter: Any = TraceDrafter(row["prompt_tokens"], output, row["guess"], row["guess_p"], costs, p_min, cache)
        else:
            drafter = sp.NgramDrafter(row["prompt_tokens"])
        spec = sp.Speculation(drafter, cost=cost)
        time, _ = sp.simulate(spec, output)
        time += getattr(drafter, "extra", 0.0)
        plain = float(len(output) - 1)
        acc = per_set[row["set"]]
        acc["plain"] += plain
        acc["spec"] += time
        if r < len(rows):
            acc["drafted"] += spec.drafted
            acc["accepted"] += spec.accepted
            acc["ratios"].append(round(plain / time, 3))
    return {s: {"ratio": round(v["plain"] / v["spec"], 3) if v["spec"] else None, "drafted": v["drafted"],
                "accepted": v["accepted"], "acceptance": round(v["accepted"] / v["drafted"], 3) if v["drafted"] else None,
                "per_prompt": v["ratios"]} for s, v in per_set.items()}


# -- run (wall clock) --------------------------------------------------------------------------------------

def run(model: str, draft: str | None, mode: str, rounds: int, max_tokens: int, threads: int | None,
        draft_cost: float | None = None, limit: int | None = None) -> dict[str, Any]:
    """Plain vs ``mode`` greedy decoding, interleaved per prompt and round; decode tokens/s from Stats.

    ``draft_cost`` replaces the draft model's cost estimate (per drafted token, relative to a target step).
    """
    import edgekit

    system, items = prompts(limit)
    times: dict[str, dict[str, list[float]]] = {s: {"off": [], "spec": []} for s in SETS}
    drafted = {s: 0 for s in SETS}
    accepted = {s: 0 for s in SETS}
    mismatches: list[str] = []
    with edgekit.load(model, n_ctx=4096, threads=threads, speculative="off", seed=1, draft=draft) as m:
        if m.draft is not None and draft_cost is not None:
            m.draft.cost = draft_cost
        for r in range(rounds):
            for item in items:
                messages = _messages(system, item["prompt"])
                texts = {}
                order = ("off", "spec") if r % 2 == 0 else ("spec", "off")
                for which in order:
                    m.reset()
                    c = m.chat(messages, temperature=0, max_tokens=max_tokens,
                               speculative="off" if which == "off" else mode)
                    texts[which] = c.text
                    # Decode time per emitted token after the first (the first comes from the prefill).
                    times[item["set"]][which].append(c.stats.decode_s / max(1, c.stats.gen_tokens - 1))
                    if which == "spec" and r == 0:
                        drafted[item["set"]] += c.stats.drafted_tokens
                        accepted[item["set"]] += c.stats.accepted_tokens
                if texts["off"] != texts["spec"]:
                    mismatches.append(item["name"])
        # what the rule priced with: to predict this run's ratio with ``simulate --measured`` on a trace
        curve = {n: round(r, 3) for n, r in m.cost_curve.measured.items()}
        unit = m.cost_curve.one_token_s
        step = m.draft.costs.step(unit) if m.draft is not None else None
        token = m.draft.costs.token_s / unit if m.draft is not None and m.draft.costs.token_s and unit else None
    result: dict[str, Any] = {"model": Path(model).name, "draft": Path(draft).name if draft else None, "mode": mode,
                              "draft_cost": draft_cost, "measured_curve": curve,
                              "measured_draft_step": None if step is None else round(step, 3),
                              "measured_draft_token": None if token is None else round(token, 4),
                              "rounds": rounds, "max_tokens": max_tokens, "identical": not mismatches,
                              "mismatches": sorted(set(mismatches))}
    for s in SETS:
        off, spec = times[s]["off"], times[s]["spec"]
        result[s] = {"speed_ratio": round(statistics.fmean(off) / statistics.fmean(spec), 3) if spec else None,
                     "drafted": drafted[s], "accepted": accepted[s],
                     "acceptance": round(accepted[s] / drafted[s], 3) if drafted[s] else None}
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and run one of trace / simulate / run / build, printing JSON."""
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.studies.speculation",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("trace", "run"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=None, help="target GGUF (default: SmolLM2-135M-Instruct Q4_1)")
        p.add_argument("--draft", default=None, help="draft model GGUF (same vocabulary)")
        p.add_argument("-n", "--max-tokens", type=int, default=96, help="answer tokens (default: 96)")
        p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
        p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each set")
    sub.choices["trace"].add_argument("--out", default=None, help="write the trace here (default: stdout)")
    sub.choices["run"].add_argument("--mode", default="auto", help="speculative mode to compare with off")
    sub.choices["run"].add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    sub.choices["run"].add_argument("--draft-cost", type=float, default=None,
                                    help="the draft model's cost per token relative to a target step "
                                         "(default: the weight-size ratio)")
    p = sub.add_parser("simulate")
    p.add_argument("trace", help="a file written by the trace command")
    p.add_argument("--cost", choices=("smollm2", "qwen05b"), default="smollm2", help="verification cost curve")
    p.add_argument("--measured", default=None,
                   help="the JSON a `run` printed: price with the curve and draft step it measured")
    p.add_argument("--draft-cost", type=float, default=None,
                   help="draft time per token relative to one target step (default: 0.6 with a draft)")
    p.add_argument("--p-min", type=float, default=None, help="draft stops below this guess probability")
    sub.add_parser("build", help="build SmolLM2 F16 / Q8_0 / Q4_0 GGUFs (cached) and print their paths")
    a = ap.parse_args(argv)

    if a.cmd == "build":
        from edgekit.samples.smollm2 import cached_smollm2_ggufs

        print(json.dumps({t: str(p) for t, p in cached_smollm2_ggufs().items()}))
    elif a.cmd == "trace":
        data = trace(a.model or _default_model(), a.draft, a.max_tokens, a.threads, Path(a.out) if a.out else None,
                     a.limit)
        if not a.out:
            print(json.dumps(data))
    elif a.cmd == "simulate":
        from edgekit.runtime.draft import P_MIN

        data = json.loads(Path(a.trace).read_text(encoding="utf-8"))
        cost: str | dict[int, float] = a.cost
        draft_cost = a.draft_cost if a.draft_cost is not None else 0.6
        draft_token = None
        if a.measured:
            measured = json.loads(Path(a.measured).read_text(encoding="utf-8"))
            cost = {int(n): r for n, r in measured["measured_curve"].items()}
            if a.draft_cost is None and measured.get("measured_draft_step") is not None:
                draft_cost = measured["measured_draft_step"]
            draft_token = measured.get("measured_draft_token")
        rounds = measured.get("rounds", 1) if a.measured else 1
        print(json.dumps(simulate(data, cost, draft_cost, a.p_min if a.p_min is not None else P_MIN, draft_token,
                                  rounds)))
    else:
        print(json.dumps(run(a.model or _default_model(), a.draft, a.mode, a.rounds, a.max_tokens, a.threads,
                             a.draft_cost, a.limit)))


if __name__ == "__main__":
    main()
