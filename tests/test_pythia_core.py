"""The Pythia evaluation core, offline: revisions, probe sets, scoring, loading, rows.

Every model here is the tiny GPT-NeoX of ``tests/hf_cache.py``, loaded through the real
``from_pretrained(name, revision=...)`` path from a hub cache built in a temp dir.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
from safetensors.torch import load_file

from emergence_core.metrics import METRICS_KEY, METRICS_SCHEMA, Measure
from emergence_core.pythia import (
    PROBESETS,
    REVISIONS,
    ModelNameError,
    ProbeSet,
    ProbeSetError,
    PythiaLoadError,
    RevisionError,
    evaluate_model,
    evaluate_revision,
    load_checkpoint,
    load_probeset,
    load_probesets,
    parse_model_name,
    parse_revisions,
    probeset_names,
    read_probeset_file,
    revision_step,
    score_probeset,
    trial_id,
)
from tests import hf_cache
from tests.hf_cache import TINY_LAYERS, TINY_MODEL, TINY_REVISIONS, repo_dir

# The offline hub-cache fixtures, bound here so that pytest finds them in this module.
hf_hub_dir, offline_hub = hf_cache.hf_hub_dir, hf_cache.offline_hub

# --- revisions and model names ---------------------------------------------------------------


def test_the_154_revisions():
    assert len(REVISIONS) == 154 and len(set(REVISIONS)) == 154
    assert REVISIONS[:12] == ("step0", "step1", "step2", "step4", "step8", "step16", "step32",
                              "step64", "step128", "step256", "step512", "step1000")
    assert REVISIONS[-1] == "step143000"
    steps = [revision_step(r) for r in REVISIONS]
    assert steps == sorted(steps) and steps[11:] == list(range(1000, 143_001, 1000))


def test_parse_revision_selections():
    assert parse_revisions("all") == [(r, revision_step(r)) for r in REVISIONS]
    strided = parse_revisions("step1000..step143000:1000")
    assert len(strided) == 143 and strided[0] == ("step1000", 1000)
    assert strided[-1] == ("step143000", 143000)
    assert [s for _, s in parse_revisions("step0..step1000")] == [0, 1, 2, 4, 8, 16, 32, 64,
                                                                   128, 256, 512, 1000]
    # a list mixes names and ranges; the result is sorted by step without duplicates
    assert parse_revisions(["step3000", "step1", "step1000..step3000:1000", "step1"]) == [
        ("step1", 1), ("step1000", 1000), ("step2000", 2000), ("step3000", 3000)]
    assert parse_revisions("step512") == [("step512", 512)]


@pytest.mark.parametrize(("selection", "needles"), [
    ("step1500", ["'step1500'", "did you mean step1000 or step2000"]),
    ("stpe1000", ["'stpe1000'", "did you mean step1000"]),
    (["step0", "step3"], ["'step3'", "did you mean step2 or step4"]),
    ("step0..step16:3", ["includes step3"]),
    ("step2000..step1000", ["backwards"]),
    ("step0..step4000:x", ["stride"]),
    ([], ["empty"]),
])
def test_bad_revision_selections_fail_in_one_line(selection, needles):
    with pytest.raises(RevisionError) as err:
        parse_revisions(selection)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_model_names_are_validated_by_shape():
    m = parse_model_name("EleutherAI/pythia-160m")
    assert (m.org, m.repo, m.size, m.seed, m.deduped, m.is_pythia) == (
        "EleutherAI", "pythia-160m", "160m", 0, False, True)
    m = parse_model_name("EleutherAI/pythia-2.8b-deduped")
    assert (m.size, m.deduped, m.seed) == ("2.8b", True, 0)
    assert parse_model_name("EleutherAI/pythia-410m-seed7").seed == 7
    tiny = parse_model_name(TINY_MODEL)
    assert tiny.name == TINY_MODEL and not tiny.is_pythia and tiny.seed == 0
    for bad in ("pythia-160m", "EleutherAI/", "a/b/c", "EleutherAI/pythia--160m", "",
                "EleutherAI/pythia 160m"):
        with pytest.raises(ModelNameError, match="Hub repository id"):
            parse_model_name(bad)


# --- probe sets ------------------------------------------------------------------------------


def test_shipped_probesets_load_and_follow_the_rules():
    sets = load_probesets()
    assert [s.name for s in sets] == list(probeset_names()) == [
        "grammar", "semantics", "arithmetic", "icl", "factual", "logic", "general_text"]
    for ps in sets:
        assert 16 <= len(ps) <= 200, ps.name
        assert all(item.continuation.startswith(" ") for item in ps.items)
        assert all((item.bad is not None) == (ps.spec.kind == "pair") for item in ps.items)
        assert len({(i.prompt, i.continuation, i.bad) for i in ps.items}) == len(ps)
    with pytest.raises(AttributeError):  # frozen
        sets[0].items[0].prompt = "changed"


def test_arithmetic_items_are_correct_and_worded_variously():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    words = {"plus": "+", "sum": "+", "minus": "-", "difference": "-", "times": "*",
             "product": "*"}
    items = load_probeset("arithmetic").items
    for item in items:
        a, b = (int(x) for x in re.findall(r"\d+", item.prompt))
        op = re.search(r"[-+*]|plus|sum|minus|difference|times|product", item.prompt).group()
        expected = ops[words.get(op, op)](a, b)
        assert item.continuation == f" {expected}", item
    assert {words.get(o, o) for o in (re.search(r"[-+*]|plus|sum|minus|difference|times|"
                                                r"product", i.prompt).group() for i in items)
            } == {"+", "-", "*"}
    # issue 11: not every prompt ends in '=': the read position varies
    last = Counter(i.prompt.split()[-1] for i in items)
    assert len(last) >= 5 and max(last.values()) <= len(items) / 4


def test_logic_answers_cannot_be_copied_from_the_prompt():
    """Issue 11: every answer of the old logic set appeared verbatim in its prompt. Now it
    is a forced choice (chance 0.5) between two words that are both in the prompt, the
    right one first in half the items: copying the first or the last candidate scores 0.5."""
    from emergence_core.pythia.build_probesets import logic_items
    from emergence_core.pythia.evaluate import probeset_chance

    ps = load_probeset("logic")
    assert ps.spec.kind == ps.spec.scoring == "pair" and probeset_chance(ps) == 0.5
    first = 0
    for item in ps.items:
        good, bad = item.continuation.strip(), item.bad.strip()
        words = re.findall(r"[A-Za-z]+", item.prompt)
        assert good in words and bad in words, item
        first += words.index(good) < words.index(bad)
    assert first == len(ps.items) / 2
    assert [(i.prompt, i.continuation, i.bad) for i in ps.items] == [
        (d["prompt"], d["good"], d["bad"]) for d in logic_items()]  # the file is the builder's


def test_chance_of_each_scoring_rule():
    from emergence_core.pythia.evaluate import probeset_chance

    exact = load_probeset("arithmetic")
    top = Counter(i.continuation for i in exact.items).most_common(1)[0][1]
    assert probeset_chance(exact) == top / len(exact)
    assert probeset_chance(load_probeset("general_text")) is None  # tokens need a tokenizer


def test_unknown_probeset_suggests_the_nearest():
    with pytest.raises(ProbeSetError,
                       match=r"unknown probe set 'gramar' \(did you mean 'grammar'\?\)"):
        load_probeset("gramar")
    with pytest.raises(ProbeSetError, match="named twice"):
        load_probesets(["logic", "logic"])


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


_OK = [{"prompt": f"Item {i} is", "continuation": f" number {i}"} for i in range(16)]


@pytest.mark.parametrize(("rows", "needle"), [
    (_OK[:15], "16 to 200 items, found 15"),
    ([{"prompt": f"p{i}", "continuation": " x"} for i in range(201)], "found 201"),
    ([*_OK, _OK[3]], "x.jsonl:17: duplicates the item on line 4"),
    ([*_OK, {"prompt": "Item 3 is", "continuation": " other"}], "duplicates"),
    ([*_OK, {"prompt": "Extra is", "continuation": "no space"}], "must start with one space"),
    ([*_OK, {"prompt": "Extra is", "continuation": "  two spaces"}], "must start with one space"),
    ([*_OK, {"prompt": "Extra is ", "continuation": " x"}], "must not start or end"),
    ([*_OK, {"prompt": "Extra is", "continuation": " x", "id": 3}], "exactly the keys"),
    ([*_OK, {"prompt": "Extra is", "good": " x", "bad": " y"}], "exactly the keys"),
    ([*_OK, {"prompt": "", "continuation": " x"}], "non-empty"),
    ([*_OK, "{not json"], "x.jsonl:17: not valid JSON"),
])
def test_probeset_files_are_validated(tmp_path, rows, needle):
    with pytest.raises(ProbeSetError) as err:
        read_probeset_file(_write(tmp_path / "x.jsonl", rows), PROBESETS["semantics"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_pair_files_are_validated(tmp_path):
    rows = [{"prompt": f"The dog {i}", "good": " barks.", "bad": " bark."} for i in range(16)]
    ps = read_probeset_file(_write(tmp_path / "g.jsonl", rows), PROBESETS["grammar"])
    assert ps.items[0].bad == " bark." and len(ps) == 16
    rows.append({"prompt": "The cat", "good": " sits.", "bad": " sits."})
    with pytest.raises(ProbeSetError, match="'good' and 'bad' are the same"):
        read_probeset_file(_write(tmp_path / "g.jsonl", rows), PROBESETS["grammar"])


# --- scoring on the tiny model ---------------------------------------------------------------


@pytest.fixture
def tiny(offline_hub):
    return load_checkpoint(TINY_MODEL, "step1", device="cpu", dtype="float32")


def _subset(name: str, n: int) -> ProbeSet:
    ps = load_probeset(name)
    return ProbeSet(ps.spec, ps.items[:n])


def test_batched_scoring_equals_one_at_a_time(tiny):
    model, tok = tiny
    for ps in (_subset("grammar", 24), _subset("icl", 24), _subset("general_text", 24)):
        one = score_probeset(model, tok, ps, batch_size=1, positions=("sep", "prompt_mean"))
        many = score_probeset(model, tok, ps, batch_size=7, positions=("sep", "prompt_mean"))
        torch.testing.assert_close(one.logprob, many.logprob, rtol=0, atol=1e-5)
        assert torch.equal(one.token_hits, many.token_hits) and torch.equal(one.exact, many.exact)
        if ps.spec.kind == "pair":
            torch.testing.assert_close(one.logprob_bad, many.logprob_bad, rtol=0, atol=1e-5)
        for pos in ("sep", "prompt_mean"):
            assert one.reps[pos].shape == (TINY_LAYERS + 1, len(ps), 32)
            torch.testing.assert_close(one.reps[pos], many.reps[pos], rtol=0, atol=1e-5)


def test_scores_match_a_plain_forward(tiny):
    """Log-probs, argmax hits and per-layer states agree with model(...) on one sequence."""
    model, tok = tiny
    ps = _subset("factual", 16)
    scores = score_probeset(model, tok, ps, batch_size=5)
    for i in (0, 7, 15):
        item = ps.items[i]
        p = tok(item.prompt, add_special_tokens=False)["input_ids"]
        c = tok(item.continuation, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model(torch.tensor([p + c]), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0].double(), -1)
        pred = torch.arange(len(p) - 1, len(p) + len(c) - 1)
        assert scores.logprob[i].item() == pytest.approx(logp[pred, c].sum().item(), abs=1e-4)
        hits = out.logits[0, pred].argmax(-1) == torch.tensor(c)
        assert scores.token_hits[i] == int(hits.sum())
        # hidden_states[l] for l < L is the residual stream; the last is after the final norm
        for layer in range(TINY_LAYERS):
            torch.testing.assert_close(scores.reps["sep"][layer, i],
                                       out.hidden_states[layer][0, len(p) - 1])


def test_eager_and_sdpa_attention_agree(offline_hub):
    ps = [_subset("logic", 20)]
    results = []
    for attn in ("eager", "sdpa"):
        model, tok = load_checkpoint(TINY_MODEL, "step1", attn_implementation=attn)
        results.append(evaluate_model(model, tok, ps, batch_size=6)["logic"])
    assert results[0].item_logprob == pytest.approx(results[1].item_logprob, abs=1e-5)
    assert results[0].rankme["sep"] == pytest.approx(results[1].rankme["sep"], rel=1e-4)


# --- loading and rows ------------------------------------------------------------------------


def test_each_revision_loads_its_own_snapshot(offline_hub):
    repo = repo_dir(offline_hub)
    for rev in TINY_REVISIONS:
        model, _ = load_checkpoint(TINY_MODEL, rev, dtype="bfloat16")
        assert next(model.parameters()).dtype == torch.bfloat16
        commit = (repo / "refs" / rev).read_text()
        saved = load_file(repo / "snapshots" / commit / "model.safetensors")
        got = model.state_dict()
        # transformers 5 saves the head under Pythia's published name, embed_out
        for ours, theirs in (("gpt_neox.layers.0.attention.query_key_value.weight",) * 2,
                             ("lm_head.weight", "embed_out.weight")):
            torch.testing.assert_close(got[ours], saved[theirs].to(torch.bfloat16))


def test_rows_for_every_revision_probeset_and_layer(offline_hub):
    sets = load_probesets()
    tables = {rev: evaluate_revision(TINY_MODEL, rev, sets, device="cpu", dtype=torch.float32,
                                     sweep="pythia-test", batch_size=32)
              for rev in TINY_REVISIONS}
    for rev, t in tables.items():
        assert t.schema == METRICS_SCHEMA
        # accuracy, logprob, chance, model_dtype, then RankMe centred and not per layer
        assert t.num_rows == len(sets) * (4 + 2 * (TINY_LAYERS + 1))
        assert set(t.column("step").to_pylist()) == {revision_step(rev)}
        assert set(t.column("source").to_pylist()) == {"pythia"}
        assert set(t.column("scale").to_pylist()) == {TINY_MODEL}
        assert set(t.column("level").to_pylist()) == {None}
        assert set(t.column("task").to_pylist()) == set(probeset_names())
        assert set(t.column("trial").to_pylist()) == {trial_id(TINY_MODEL, n)
                                                       for n in probeset_names()}
    import pyarrow as pa

    every = pa.concat_tables(tables.values())
    keys = list(zip(*(every.column(k).to_pylist() for k in METRICS_KEY), strict=True))
    assert len(keys) == len(set(keys))  # one row per (trial, step, measure, layer, level)
    rank_rows = every.filter(pc.equal(every["measure"], Measure.RANKME))
    cells = sorted(zip(rank_rows["step"].to_pylist(), rank_rows["task"].to_pylist(),
                       rank_rows["layer"].to_pylist(), strict=True))
    expected = sorted((revision_step(r), n, layer) for r in TINY_REVISIONS
                      for n in probeset_names() for layer in range(TINY_LAYERS + 1))
    assert cells == expected  # every (revision, probe set, layer) exactly once
    values = every.column("value").to_pylist()
    assert all(v is not None and v == v for v in values)
    acc = every.filter(pc.equal(every["measure"], Measure.ACCURACY))["value"].to_pylist()
    assert all(0.0 <= a <= 1.0 for a in acc)
    for task, layer, v in zip(rank_rows["task"].to_pylist(), rank_rows["layer"].to_pylist(),
                              rank_rows["value"].to_pylist(), strict=True):
        assert v > 1.0, (task, layer, v)  # arithmetic's prompts no longer all end in '='
    dtype_rows = every.filter(pc.equal(every["measure"], "model_dtype.float32"))
    assert dtype_rows.num_rows == len(sets) * len(TINY_REVISIONS)
    chance = every.filter(pc.equal(every["measure"], Measure.CHANCE))
    got = dict(zip(chance["task"].to_pylist(), chance["value"].to_pylist(), strict=False))
    assert got["grammar"] == got["logic"] == 0.5 and 0 < got["general_text"] < 1

    # different revisions give different values; the same revision twice, identical ones
    def measured(t):
        return t.sort_by([("trial", "ascending"), ("measure", "ascending"),
                          ("layer", "ascending")])["value"].to_pylist()

    assert measured(tables["step0"]) != measured(tables["step1"])
    assert measured(tables["step1"]) != measured(tables["step1000"])
    again = evaluate_revision(TINY_MODEL, "step1", sets, device="cpu", dtype="float32",
                              sweep="pythia-test", batch_size=32, attempt=1)
    assert measured(again) == measured(tables["step1"])  # bit for bit
    assert set(again.column("attempt").to_pylist()) == {1}


def test_prompt_mean_is_logged_beside_sep(offline_hub):
    t = evaluate_revision(TINY_MODEL, "step0", [_subset("semantics", 16)], device="cpu",
                          dtype="float32", sweep="s", positions=("sep", "prompt_mean"))
    assert sorted(set(t.column("measure").to_pylist())) == [
        "accuracy", "chance", "logprob", "model_dtype.float32", "rankme", "rankme@prompt_mean",
        "rankme_uncentred", "rankme_uncentred@prompt_mean"]
    with pytest.raises(ValueError, match="read positions"):
        evaluate_revision(TINY_MODEL, "step0", ["semantics"], device="cpu", dtype="float32",
                          sweep="s", positions=("answer",))


@pytest.mark.parametrize(("model_name", "revision", "needle"), [
    (TINY_MODEL, "step2", "revision not in the local hub cache (offline); cached: main, step0"),
    ("EleutherAI/pythia-not-cached", "step1000", "model not in the local hub cache"),
])
def test_cannot_load_is_one_typed_line(offline_hub, model_name, revision, needle):
    with pytest.raises(PythiaLoadError) as err:
        evaluate_revision(model_name, revision, ["logic"], device="cpu", dtype="float32",
                          sweep="s")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load {model_name}@{revision}: ")
    assert needle in message
    assert (err.value.model_name, err.value.revision) == (model_name, revision)
    copy = pickle.loads(pickle.dumps(err.value))  # a Ray task's error travels pickled
    assert str(copy) == message and copy.revision == revision


def test_bad_names_fail_before_loading(offline_hub, tmp_path, monkeypatch):
    with pytest.raises(RevisionError, match="'step3'"):
        evaluate_revision(TINY_MODEL, "step3", ["logic"], device="cpu", dtype="float32",
                          sweep="s")
    with pytest.raises(ModelNameError):
        evaluate_revision("pythia-tiny-test", "step1", ["logic"], device="cpu",
                          dtype="float32", sweep="s")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_checkpoint(TINY_MODEL, "step1", dtype="float8")
    # a local folder of the same name would make from_pretrained ignore the revision
    monkeypatch.chdir(tmp_path)
    (tmp_path / TINY_MODEL).mkdir(parents=True)
    with pytest.raises(PythiaLoadError, match="local directory"):
        load_checkpoint(TINY_MODEL, "step1")


def test_trial_id_is_path_safe():
    assert trial_id("EleutherAI/pythia-160m", "grammar") == "EleutherAI--pythia-160m:grammar"
    assert "/" not in trial_id(TINY_MODEL, "icl")


def test_the_dtype_is_recorded_and_a_mixed_trajectory_is_flagged(offline_hub):
    """Issue 11: with dtype auto a GPU node ran bfloat16 and a CPU node float32, so RankMe
    of one checkpoint depended on the node. The dtype is a row now, RankMe is computed in
    float32 either way, and analyze names a trajectory that mixes dtypes."""
    from emergence_core.analysis import analyze

    sets = [_subset("semantics", 16)]
    bf = evaluate_revision(TINY_MODEL, "step1", sets, device="cpu", dtype="bfloat16",
                           sweep="s")
    f32 = evaluate_revision(TINY_MODEL, "step0", sets, device="cpu", dtype="float32",
                            sweep="s")
    assert "model_dtype.bfloat16" in bf.column("measure").to_pylist()
    rank = bf.filter(pc.equal(bf["measure"], Measure.RANKME))["value"].to_pylist()
    assert all(v == v and v > 1.0 for v in rank[1:])
    import pyarrow as pa

    a = analyze(pa.concat_tables([f32, bf]))
    assert not any(m.startswith("model_dtype") for m in a.measures)
    assert any("revisions measured in different dtypes (bfloat16 1, float32 1)" in m
               for m in a.missing), a.missing
