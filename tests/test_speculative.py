"""Speculative decoding: the drafter and the adaptive rule (no model), then the runtime on SmolLM2-135M-Instruct's
real weights, drafting by prompt lookup and with a draft model, where speculation must never change the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from loaded_models import SYSTEM, smol

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime import speculative
from edgekit.runtime.speculative import NgramDrafter, Speculation

# A text of our own, so the model has something to copy from.
TEXT = ("The lighthouse on Marrow Point was built in 1874 from granite quarried on the island itself. "
        "Its lamp burned whale oil until 1902, when the keepers switched to kerosene, and it was electrified "
        "in 1951. The last keeper, Ada Fenwick, left in 1989, and the light has run by itself ever since.")
CODE = "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))\nprint(add(10, 20))\n"
GROUNDED = {
    "repeat": f"Repeat the following text exactly, word for word:\n\n{TEXT}",
    "extract": f"{TEXT}\n\nCopy the sentence of the text above that names the last keeper.",
    "rewrite": f"Rewrite the following text as a bulleted list of facts:\n\n{TEXT}",
    "code": f"Rename the function add to plus in this code and show the whole code:\n\n```python\n{CODE}```",
}
OPEN_ENDED = "Write a short poem about the sea."


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# --- no model -----------------------------------------------------------------------------------------


def test_drafter_continues_the_latest_longest_match():
    d = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    assert d.draft(4) == []  # 8 never came before
    d.append(2)
    d.append(3)  # suffix 8 2 3: no trigram match; the bigram 2 3 came twice, latest before 7
    assert d.draft(3) == [7, 8, 2]
    assert d.draft(0) == []
    d = NgramDrafter([7, 1, 2, 3, 5, 2, 4, 9, 1, 2])
    assert d.draft(1) == [3]  # the bigram 1 2 wins over the later unigram 2 (followed by 4)


def test_drafter_never_matches_the_suffix_itself():
    d = NgramDrafter([5, 6, 7])
    assert d.draft(3) == []  # the only 5 6 7 is the suffix
    d.append(5)
    assert d.draft(3) == [6, 7, 5]  # the draft may run into the text it repeats


def test_drafter_reports_how_long_the_copied_context_matches():
    d = NgramDrafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5])
    assert d.draft(2) == [6, 7] and d.match == 5  # 1 2 3 4 5 matched, beyond the 3-gram looked up
    d.append(42)
    assert d.draft(2) == [] and d.match == 0


def test_cost_curve_interpolates_the_measured_points():
    cost = speculative.interpolate({1: 1.0, 4: 2.5, 8: 4.0})
    assert cost(1) == 1.0 and cost(4) == 2.5 and cost(6) == pytest.approx(3.25)
    assert cost(16) == pytest.approx(8.0)  # past the last point: grows in proportion


def test_cost_curve_follows_measured_times_and_prices_untried_sizes_by_the_priors_shape():
    curve = speculative.CostCurve({1: 1.0, 4: 2.0, 16: 8.0})
    assert curve.ratio(4) == 2.0 and curve.one_token_s is None  # nothing measured: the prior
    curve.observe(4, 0.012)
    assert curve.ratio(4) == 2.0  # no single-token time yet to price it against
    curve.observe(1, 0.010)
    for _ in range(60):
        curve.observe(4, 0.012)  # a flatter device than the prior says
    assert curve.ratio(4) == pytest.approx(1.2, rel=1e-4) and curve.measured_sizes == [1, 4]
    assert curve.ratio(2) == pytest.approx(1 + 0.2 / 3, rel=1e-4)  # between two measurements
    assert curve.ratio(16) == pytest.approx(8.0 * 1.2 / 2.0, rel=1e-4)  # past them: the prior's shape, scaled
    curve.observe(1, 0.020)  # a deeper context: slower steps, the ratios already taken stand
    assert curve.ratio(4) == pytest.approx(1.2, rel=1e-4)
    curve.observe(4, 0.100)  # one slow step moves a size's average only part of the way
    assert 1.2 < curve.ratio(4) < 3.0  # (a full move would be to 0.100 / 0.012 = 8.3)
    fresh = speculative.CostCurve({1: 1.0, 4: 2.0, 16: 8.0})
    fresh.observe(1, 0.010)
    fresh.observe(4, 0.100)  # even the first timing of a size: it starts from the curve's price (here the prior's)
    assert fresh.ratio(4) == pytest.approx(0.8 * 2.0 + 0.2 * 10.0)
    stale = speculative.CostCurve({1: 1.0, 4: 2.0, 16: 8.0})
    stale.observe(1, 0.010)
    for _ in range(64):  # a long copy: every step drafts, the single-token time grows old...
        stale.observe(4, 0.030)
    for _ in range(36):  # ...while the context grows and its steps slow down
        stale.observe(4, 0.100)
    assert stale.ratio(4) == pytest.approx(3.0, rel=1e-3)  # timings against the stale time didn't count
    long = speculative.best_length(16, 0.97, 0.97, speculative.CostCurve({1: 1.0, 16: 2.0}).ratio)
    assert long > speculative.best_length(16, 0.97, 0.97, speculative.verify_cost)  # flatter: longer drafts


def test_a_draft_models_first_timing_of_a_size_replaces_the_priors_price():
    curve = speculative.CostCurve({1: 1.0, 4: 2.0, 16: 8.0})
    curve.observe(1, 0.010)
    curve.observe(4, 0.012, first_replaces=True)  # a probe's verification: this device's price, not the prior's
    curve.observe(8, 0.016, first_replaces=True)
    assert curve.ratio(4) == pytest.approx(1.2) and curve.ratio(8) == pytest.approx(1.6)
    assert curve.ratio(6) == pytest.approx(1.4)  # between two timed sizes
    curve.observe(6, 0.100)  # prompt lookup's first verification starts from the curve's price for it (1.4)
    assert curve.ratio(6) == pytest.approx(0.8 * 1.4 + 0.2 * 10.0)
    curve.observe(8, 0.026, first_replaces=True)  # a size's later timings are averaged in
    assert curve.ratio(8) == pytest.approx(0.8 * 1.6 + 0.2 * 2.6)
    fixed = speculative.CostCurve({1: 1.0, 16: 16.0}, timed=False)
    fixed.observe(1, 0.01)
    fixed.observe(8, 0.01, first_replaces=True)
    assert fixed.one_token_s is None and fixed.ratio(8) == pytest.approx(8.0)


def test_draft_costs_take_the_median_step_and_probe_as_long_as_a_good_pair_would_draft():
    from edgekit.runtime import draft_cost

    costs = draft_cost.DraftCosts(prior=0.2)
    for seconds in (0.004, 0.004, 0.004, 0.004, 0.030):  # one step slowed by another process
        costs.observe(1, seconds)
    assert costs.step_s == pytest.approx(0.004)  # a running average would have moved to 0.0084
    flat = speculative.CostCurve({1: 1.0, 16: 2.0}, timed=False)
    k = draft_cost.plan(costs, pending=1, limit=16, p_first=0.6, p_next=0.7, cost=flat)
    assert k == speculative.best_length(16, draft_cost.PROBE_ACCEPTANCE, draft_cost.PROBE_ACCEPTANCE, flat,
                                        costs.step(None)) > 2  # the first probe measures guesses after a right one
    steep = speculative.CostCurve({1: 1.0, 16: 16.0}, timed=False)
    assert draft_cost.plan(draft_cost.DraftCosts(prior=0.2), 1, 16, 0.6, 0.7, steep) == 2  # at least two


def test_best_length_weighs_acceptance_against_the_batch_cost():
    cost = speculative.verify_cost
    assert speculative.best_length(16, 0.0, 0.0, cost) == 0  # nothing accepted: never draft
    assert speculative.best_length(16, 0.3, 0.5, cost) == 0  # open text: batches cost more than they save
    long = speculative.best_length(16, 0.97, 0.97, cost)
    assert long >= 8  # a copy in progress: long drafts
    assert speculative.best_length(3, 0.97, 0.97, cost) == 3  # never past the room
    assert speculative.best_length(16, 0.97, 0.97, cost, draft_cost=1.0) < long  # drafting that costs: shorter


def test_rule_keeps_drafting_while_drafts_are_accepted():
    prompt = list(range(100, 300))
    spec = Speculation(NgramDrafter(prompt))
    time, steps = speculative.simulate(spec, prompt[20:140])  # the answer copies its prompt
    assert spec.drafted > 80 and spec.accepted == spec.drafted
    assert steps < 40 and time < 119 / 1.8  # fewer, longer steps: a cost-model speed-up near 2x
    assert spec.rates(3, True)[1].value > 0.9  # long matches, a copy in progress: next tokens accepted


def test_rule_stops_drafting_on_failing_drafts_and_resumes_on_a_copy():
    import random

    rng = random.Random(0)
    prompt = [rng.randrange(50) for _ in range(300)]  # a small alphabet: short n-grams match everywhere
    noise = [rng.randrange(50) for _ in range(150)]
    spec = Speculation(NgramDrafter(prompt))
    pending: list[int] = []
    verified = 0
    for tok in noise:  # as Model.generation drives it, counting verified drafted tokens
        if pending:
            spec.verdict(tok == pending[0])
            verified += 1
        spec.append(tok)
        if pending and tok == pending[0]:
            pending.pop(0)
            continue
        pending = spec.propose(room=16)
    assert verified <= 10  # failing drafts stop within a few: the guesses are scored for free after that
    assert spec.rates(0, False)[0].value < 0.15
    before = spec.drafted
    speculative.simulate(spec, prompt[100:200])  # then the answer starts quoting its prompt
    assert spec.drafted - before > 60 and spec.accepted > 50


def test_bad_mode_is_refused_clearly(tmp_path):
    for bad in ("fast", "", "NGRAM"):
        with pytest.raises(EdgekitError, match="speculative must be one of auto, ngram, off"):
            edgekit.Sampling(speculative=bad)
    with pytest.raises(EdgekitError, match="speculative"):  # before looking for the model at all
        edgekit.load(tmp_path / "missing.gguf", speculative="yes")


# --- real weights -------------------------------------------------------------------------------------


def _priced_by_the_prior(model):
    """Make ``model``'s drafting rule price drafts by the prior cost curve, not by this CPU's timings.

    So the rule drafts alike on every machine: these tests are about exactness and bookkeeping, which
    never depend on the rule (test_the_engine_times_its_batches_for_the_rule covers the measuring).
    """
    curve = speculative.CostCurve(timed=False)
    model._engine.cost_curve = curve
    return model


@pytest.fixture(scope="module")
def m():
    return _priced_by_the_prior(smol())


@pytest.mark.slow
def test_the_engine_times_its_batches_for_the_rule(smollm2_gguf):
    with edgekit.load(smollm2_gguf, n_ctx=1024, seed=1) as fresh:
        curve = fresh._engine.cost_curve
        fresh.chat(_messages(OPEN_ENDED), temperature=0, max_tokens=16, speculative="off")
        assert curve.one_token_s is not None and curve.measured_sizes == [1]  # single-token steps only
        fresh.reset()
        c = fresh.chat(_messages(GROUNDED["repeat"]), temperature=0, max_tokens=48, speculative="ngram")
        # Untried sizes are priced by the prior, so the first drafts come as on any machine...
        assert c.stats.drafted_tokens > 0
        # ...and the batches they made were timed for the rule.
        assert max(curve.measured_sizes) > 1


def _pair(m, messages: list[dict], mode: str = "ngram", **kw) -> tuple[edgekit.Completion, edgekit.Completion]:
    """The same call without and with speculation, each from a fresh cache; checks the bookkeeping agrees."""
    m.reset()
    off = m.chat(messages, speculative="off", **kw)
    cached_off = m.cached_tokens
    m.reset()
    on = m.chat(messages, speculative=mode, **kw)
    assert m.cached_tokens == cached_off  # the cache holds exactly the tokens plain decoding left there
    assert off.stats.drafted_tokens == off.stats.accepted_tokens == 0
    return off, on


def _same(off: edgekit.Completion, on: edgekit.Completion) -> None:
    assert on.tokens == off.tokens
    assert on.text == off.text and on.finish_reason == off.finish_reason
    assert on.stats.gen_tokens == off.stats.gen_tokens and on.stats.ctx_used == off.stats.ctx_used


@pytest.mark.slow
def test_greedy_repeat_is_identical_and_drafts_are_accepted(m):
    off, on = _pair(m, _messages(GROUNDED["repeat"]), temperature=0, max_tokens=80)
    _same(off, on)
    assert "Marrow Point" in on.text  # the model really copies, so the test exercises long drafts
    assert on.stats.drafted_tokens > 0 and on.stats.accepted_tokens > on.stats.gen_tokens // 3
    assert on.stats.accepted_tokens <= on.stats.drafted_tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", ["extract", "rewrite", "code"])
def test_greedy_grounded_prompts_are_identical(m, name):
    off, on = _pair(m, _messages(GROUNDED[name]), temperature=0, max_tokens=96)
    _same(off, on)
    assert on.stats.drafted_tokens > 0 and on.stats.accepted_tokens > 0


@pytest.mark.slow
def test_greedy_open_ended_is_identical(m):
    off, on = _pair(m, _messages(OPEN_ENDED), temperature=0, max_tokens=96)
    _same(off, on)
    assert on.stats.accepted_tokens <= on.stats.drafted_tokens


@pytest.mark.slow
def test_penalty_and_json_schema_see_exactly_the_emitted_tokens(m):
    # Both depend on the sampler chain's history: a drafted token it saw but nobody emitted would show.
    off, on = _pair(m, _messages(GROUNDED["repeat"]), temperature=0, max_tokens=64, repeat_penalty=1.3)
    _same(off, on)
    schema = {"type": "object", "properties": {"keeper": {"type": "string"}, "built": {"type": "integer"}},
              "required": ["keeper", "built"]}
    prompt = f"{TEXT}\n\nGive the last keeper's name and the year the lighthouse was built, as JSON."
    off, on = _pair(m, _messages(prompt), temperature=0, max_tokens=48, json_schema=schema)
    _same(off, on)
    assert on.stats.drafted_tokens > 0


@pytest.mark.slow
def test_max_tokens_and_stop_strings_cut_inside_a_draft(m):
    messages = _messages(GROUNDED["repeat"])
    full = m.chat(messages, temperature=0, max_tokens=48, speculative="off")
    for n in (1, 2, 5, 11, 23):
        off, on = _pair(m, messages, temperature=0, max_tokens=n)
        _same(off, on)
        assert on.tokens == full.tokens[:n] and on.finish_reason == "length"
    words = full.text.split()
    for stop in (words[len(words) // 2], "1902", "kero"):
        off, on = _pair(m, messages, temperature=0, max_tokens=48, stop=[stop])
        _same(off, on)
        assert on.finish_reason == "stop" and stop not in on.text
    assert on.stats.accepted_tokens > 0  # the cut came inside an accepted run


@pytest.mark.slow
def test_the_kv_cache_after_a_cut_draft_serves_the_next_call(m):
    # A follow-up that reuses the cache must answer as it does from scratch: the rejected
    # and the unemitted drafted tokens left no cells behind, and no emitted token lost its own.
    messages = _messages(GROUNDED["repeat"])
    m.reset()
    first = m.chat(messages, temperature=0, max_tokens=30, stop=["1902"], speculative="ngram")
    follow = messages + [{"role": "assistant", "content": first.text},
                         {"role": "user", "content": "When was the lamp electrified?"}]
    warm = m.chat(follow, temperature=0, max_tokens=24, speculative="off")
    assert warm.stats.cached_tokens > first.stats.prompt_tokens
    m.reset()
    cold = m.chat(follow, temperature=0, max_tokens=24, speculative="off")
    assert warm.tokens == cold.tokens


def _outcomes(model, messages: list[dict], mode: str, n: int, kw: dict) -> tuple[Counter, Counter, int, int]:
    """Answers over seeds 0..n-1 without speculation and with ``mode``; drafted and accepted tokens."""
    off: Counter = Counter()
    on: Counter = Counter()
    drafted = accepted = 0
    for seed in range(n):
        off[tuple(model.chat(messages, seed=seed, speculative="off", **kw).tokens)] += 1
        c = model.chat(messages, seed=seed, speculative=mode, **kw)
        on[tuple(c.tokens)] += 1
        drafted += c.stats.drafted_tokens
        accepted += c.stats.accepted_tokens
    return off, on, drafted, accepted


@pytest.mark.slow
def test_sampling_distribution_is_unchanged(m):
    # First four tokens at temperature 1 (no truncation) over many seeds, with and without speculation
    # (the rule drafts once a guess came true, so the fourth token is the first it may draft).
    # Every emitted token takes exactly one draw from the chain's generator in both modes, so the same
    # seed couples the two runs: their empirical distributions agree up to rare last-bit differences of
    # batched logits. A rule that kept drafted tokens more readily than the model picks them (say, any
    # draft in the top few) changes the outcome on many seeds and breaks the bound.
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=4)
    messages = _messages(GROUNDED["repeat"])
    m.reset()
    n = 300
    off, on, drafted, accepted = _outcomes(m, messages, "ngram", n, kw)
    assert drafted > n // 4 and accepted > 0  # speculation really ran inside these four tokens
    assert accepted < drafted  # some drafts were rejected: the rule was put to the test
    tv = 0.5 * sum(abs(off[k] - on[k]) for k in off.keys() | on.keys()) / n
    (top, count), = off.most_common(1)
    assert count < 0.95 * n, off.most_common(3)  # the prompt leaves room for a biased rule to show
    assert tv < 0.05, (tv, off.most_common(5), on.most_common(5))
    assert abs(on[top] - count) < 0.05 * n


# --- CLI ----------------------------------------------------------------------------------------------


def _chat(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "edgekit", "chat", *args], capture_output=True, text=True,
                          env=env, timeout=180, stdin=subprocess.DEVNULL)


def test_cli_bad_speculative_value_is_one_line(smollm2_gguf):
    out = _chat(str(smollm2_gguf), "--speculative", "sometimes", "-p", "hi")
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "speculative" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_speculative_modes_give_the_same_answer_and_report_drafts(smollm2_gguf):
    answers = {}
    for mode in ("off", "ngram"):
        out = _chat(str(smollm2_gguf), "--speculative", mode, "-s", SYSTEM, "-p", GROUNDED["repeat"],
                    "--temp", "0", "-n", "40", "--json")
        assert out.returncode == 0, out.stderr
        answers[mode] = json.loads(out.stdout)
    assert answers["ngram"]["answer"] == answers["off"]["answer"]
    assert answers["off"]["stats"]["drafted_tokens"] == 0
    # The first drafts are priced by the prior on every CPU; how many follow depends on its batch costs.
    assert 0 < answers["ngram"]["stats"]["drafted_tokens"]
    assert answers["ngram"]["stats"]["accepted_tokens"] <= answers["ngram"]["stats"]["drafted_tokens"]


@pytest.mark.slow
def test_speculation_is_auto_by_default():
    """The default drafts where it pays: the adaptive rule keeps open-ended text at plain speed."""
    m = _priced_by_the_prior(smol())
    assert m.speculative == "auto" and m.draft is None
    c = m.chat(_messages(GROUNDED["repeat"]), temperature=0, max_tokens=48)
    assert c.stats.drafted_tokens > 0 and c.stats.accepted_tokens > 0
    assert m.chat(_messages(GROUNDED["repeat"]), temperature=0, max_tokens=24,
                  speculative="off").stats.drafted_tokens == 0


# --- a draft model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    """SmolLM2 Q8_0 as the target, drafted for by SmolLM2 Q4_0 (the same real weights, built once per machine)."""
    from edgekit.samples.smollm2 import cached_smollm2_ggufs

    files = cached_smollm2_ggufs()
    with edgekit.load(files["q8_0"], n_ctx=2048, draft=files["q4_0"], seed=1) as model:
        # On 2 cores a draft of the same size hardly pays, so the rule would rarely draft; price its
        # guesses as free so these tests exercise drafting (the output never depends on the rule).
        model.draft.cost = 0.0
        yield _priced_by_the_prior(model)


@pytest.mark.slow
def test_draft_model_greedy_output_is_identical(pair):
    assert pair.draft is not None and pair.draft.n_ctx == pair.n_ctx
    off, on = _pair(pair, _messages(GROUNDED["rewrite"]), mode="auto", temperature=0, max_tokens=64)
    _same(off, on)
    assert on.stats.drafted_tokens > 0 and on.stats.accepted_tokens > on.stats.gen_tokens // 3
    off, on = _pair(pair, _messages(OPEN_ENDED), mode="auto", temperature=0, max_tokens=48)
    _same(off, on)
    assert on.stats.accepted_tokens > 0  # the draft model guesses open text too, unlike prompt lookup
    # "ngram" ignores the draft model: its drafts come from the prompt
    off, on = _pair(pair, _messages(GROUNDED["repeat"]), mode="ngram", temperature=0, max_tokens=32)
    _same(off, on)


@pytest.mark.slow
def test_a_draft_model_evaluates_the_prompt_as_plain_decoding_does_and_times_the_curve_from_its_probes(
        smollm2_gguf, monkeypatch):
    """The target evaluates the prompt in the same batches, with the same logits, with and without a draft
    model: llama.cpp's kernels round differently per batch size, so a prompt split otherwise (to time the
    verification curve) left a different KV cache and once changed a greedy answer. The curve is timed from
    the first probes' verification batches instead."""
    from edgekit import _llama

    real, calls, target = _llama.decode, [], []

    def recorded(ctx, batch):
        if target and ctx == target[0]:  # the target's context, not the draft model's
            calls.append([bool(batch.logits[i]) for i in range(batch.n_tokens)])
        return real(ctx, batch)

    monkeypatch.setattr(_llama, "decode", recorded)
    messages = _messages(GROUNDED["extract"])
    with edgekit.load(smollm2_gguf, n_ctx=1024, draft=smollm2_gguf, seed=1, prompt_cache="off") as m:
        target.append(m._ctx)
        m.draft.cost = 0.0  # guesses priced free, so it drafts (the same file would be dropped as too slow)
        curve = m.cost_curve
        assert curve.measured_sizes == [1]
        batches = {}
        for mode in ("off", "auto"):
            m.reset()
            calls.clear()
            batches[mode] = (m.chat(messages, temperature=0, max_tokens=24, speculative=mode), list(calls))
    (off, off_calls), (on, on_calls) = batches["off"], batches["auto"]
    assert on.tokens == off.tokens
    prompt = on.stats.ctx_used - len(on.tokens)
    prefill = [c for c in off_calls if len(c) > 1]
    assert sum(map(len, prefill)) >= prompt - 1 and on_calls[:len(prefill)] == prefill
    assert on.stats.drafted_tokens > 0 and max(curve.measured_sizes) > 1  # the probes' batches were timed


@pytest.mark.slow
def test_draft_model_follows_the_target_across_calls(pair):
    # The draft's KV cache is reused by prefix: a follow-up (and a call after a reset) must still match.
    messages = _messages(GROUNDED["extract"])
    pair.reset()
    first = pair.chat(messages, temperature=0, max_tokens=24)
    follow = messages + [{"role": "assistant", "content": first.text},
                         {"role": "user", "content": "And when was the lamp electrified?"}]
    warm = pair.chat(follow, temperature=0, max_tokens=24)
    pair.reset()
    pair.draft.reset()
    cold = pair.chat(follow, temperature=0, max_tokens=24, speculative="off")
    assert warm.tokens == cold.tokens and warm.stats.drafted_tokens > 0


@pytest.mark.slow
def test_draft_model_sampling_distribution_is_unchanged(pair):
    # As test_sampling_distribution_is_unchanged, with the draft model's guesses to accept or reject.
    # A prompt the draft model is sure about (it drafts only above its p_min), so it drafts on most seeds.
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=4)
    messages = _messages(GROUNDED["repeat"])
    pair.reset()
    n = 200
    off, on, drafted, accepted = _outcomes(pair, messages, "auto", n, kw)
    assert drafted > n // 2 and 0 < accepted < drafted
    tv = 0.5 * sum(abs(off[k] - on[k]) for k in off.keys() | on.keys()) / n
    (top, count), = off.most_common(1)
    assert count < 0.95 * n, off.most_common(3)
    assert tv < 0.06, (tv, off.most_common(5), on.most_common(5))


def test_a_draft_model_with_another_vocabulary_is_refused(smollm2_gguf):
    from loaded_models import tiny_qwen2_gguf

    _, qwen = tiny_qwen2_gguf()
    with pytest.raises(EdgekitError, match="does not share") as err:
        edgekit.load(smollm2_gguf, n_ctx=256, draft=qwen)
    assert "vocabulary size (49152 vs 151" in err.value.message  # it names what differs
    assert "tokenizer" in (err.value.hint or "")


def test_closing_the_model_frees_its_draft(smollm2_gguf):
    m = edgekit.load(smollm2_gguf, n_ctx=256, draft=smollm2_gguf)  # a model always matches itself
    draft = m.draft
    assert draft is not None and draft.cost == pytest.approx(1.0)
    m.close()
    assert m.draft is None and draft._ctx is None


@pytest.mark.slow
def test_cli_draft_and_set_speculative(smollm2_gguf):
    out = _chat(str(smollm2_gguf), "--draft", str(smollm2_gguf), "-s", SYSTEM, "-p", GROUNDED["repeat"],
                "--temp", "0", "-n", "24", "--json")
    assert out.returncode == 0, out.stderr
    plain = _chat(str(smollm2_gguf), "--speculative", "off", "-s", SYSTEM, "-p", GROUNDED["repeat"],
                  "--temp", "0", "-n", "24", "--json")
    assert json.loads(out.stdout)["answer"] == json.loads(plain.stdout)["answer"]
    assert json.loads(out.stdout)["draft_model"] == str(smollm2_gguf) and json.loads(plain.stdout)["draft_model"] is None
    # a model drafting for itself can't pay (a guess costs a target step): timed once, dropped, no draft
    assert json.loads(out.stdout)["stats"]["drafted_tokens"] == 0


def test_chat_ui_set_speculative():
    from edgekit.chatui import commands
    from edgekit.chatui.settings import ChatSettings, parse_assignment

    assert parse_assignment("speculative", "OFF") == ("speculative", "off")
    assert parse_assignment("spec", "ngram") == ("speculative", "ngram")
    with pytest.raises(EdgekitError, match="speculative"):
        parse_assignment("speculative", "sometimes")
    m = smol()
    settings = ChatSettings.defaults()
    assert settings.speculative is None  # the model's own mode
    chat = edgekit.Chat(m, system=SYSTEM, **settings.kwargs())
    state = _state(m, chat, settings)
    commands.dispatch(state, "/set speculative off")
    c = chat.send(GROUNDED["repeat"], temperature=0, max_tokens=24)
    assert settings.speculative == "off" and c.stats.drafted_tokens == 0
    commands.dispatch(state, "/set speculative ngram")
    chat.reset()
    assert chat.send(GROUNDED["repeat"], temperature=0, max_tokens=24).stats.drafted_tokens > 0


def _state(model, chat, settings):
    import io

    from rich.console import Console

    from edgekit.chatui.context import ChatContext

    return ChatContext(model=model, chat=chat, settings=settings, err=Console(file=io.StringIO()), quiet=True,
                     colour=False)
