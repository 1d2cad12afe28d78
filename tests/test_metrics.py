"""File-based and Java-backed checks of `mllm_nle.metrics` (the notebook holds the small unit cases)."""
import shutil, sys, types

import pytest

from mllm_nle.core import load_json, shared_data
from mllm_nle import metrics as M
from mllm_nle import world
from mllm_nle.grammar import parse_nle

java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")


def needs_shared(*parts):
    "Skip a test that reads `../shared/data/<parts>` when that file is absent (a fresh clone)."
    p = shared_data(*parts)
    return pytest.mark.skipif(not p.exists(), reason=f"shared data not found: {p}")


@java
def test_caption_scores_ptb_meteor_multiref():
    preds = ["there is a shower head", "a man smiles", ""]
    refs = [["there is a shower head", "it has a shower"], ["the man is smiling", "a man smiles"], ["a dog runs"]]
    s = M.caption_scores(preds, refs)
    assert s["n"] == 3 and s["n_no_refs"] == 0
    for k in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE_L", "CIDEr"): assert s[k] is not None and 0 <= s[k], k
    # two of three hypotheses equal a reference, the third is empty: ROUGE-L mean is exactly 2/3
    assert s["ROUGE_L"] == pytest.approx(2 / 3)
    perfect = M.caption_scores(preds[:2], refs[:2], metrics=("meteor",))
    assert perfect["METEOR"] > 0.9 and perfect["BLEU-1"] is None


def test_spice_never_zero(monkeypatch):
    "SPICE that cannot run (no CoreNLP jars here) is None with the reason under 'unavailable', never 0.0."
    preds, refs = ["a man rides a horse"], [["a man rides a horse", "a person on a horse"]]
    ok, why = M.spice_status()
    s = M.caption_scores(preds, refs, metrics=("spice",), tokenizer="simple")
    if ok: assert isinstance(s["SPICE"], float) and "SPICE" not in s["unavailable"]
    else: assert s["SPICE"] is None and s["unavailable"]["SPICE"] == why and why != "ok"
    # the unavailable branch, whatever this machine has
    monkeypatch.setattr(M, "spice_status", lambda: (False, "CoreNLP jars missing (test)"))
    s = M.caption_scores(preds, refs, metrics=("bleu", "spice"), tokenizer="simple")
    assert s["SPICE"] is None and s["SPICE"] != 0.0 and s["unavailable"]["SPICE"] == "CoreNLP jars missing (test)"
    assert s["BLEU-1"] == pytest.approx(1.0)        # the other metrics still run
    r = M.nle_scores(["Because a man rides a horse. So the answer is yes."], ["yes"],
                     [["Because a man rides a horse. So the answer is yes"]], metrics=("bleu", "spice"), tokenizer="simple")
    for part in ("unfiltered", "filtered"):
        assert r[part]["SPICE"] is None and r[part]["unavailable"]["SPICE"] == "CoreNLP jars missing (test)"
    # not requested is not zero either
    s = M.caption_scores(preds, refs, metrics=("bleu",), tokenizer="simple")
    assert s["SPICE"] is None and s["unavailable"]["SPICE"] == "not requested"


def test_nle_scores_edge_cases():
    out = ["Because there is a shower head. So the answer is shower", "So the answer is", "", "no marker here"]
    ans = ["shower", "bathtub", "yes", "no"]
    refs = [["Because it has a shower head. So the answer is shower"], [], ["Because x. So the answer is yes"], []]
    r = M.nle_scores(out, ans, refs, metrics=("bleu", "rouge"), tokenizer="simple")
    assert (r["n_parsed"], r["n_unparseable"], r["n_correct"]) == (1, 3, 1)
    assert r["accuracy"] == pytest.approx(0.25)
    assert r["unfiltered"]["n"] == 2 and r["unfiltered"]["n_no_refs"] == 2
    assert r["filtered"]["n"] == 1 and r["filtered"]["ROUGE_L"] < 1
    none = M.nle_scores(["x"], ["y"], [[]], tokenizer="simple")
    assert none["filtered"]["n"] == 0 and none["filtered"]["BLEU-1"] is None and "BLEU-1" in none["filtered"]["unavailable"]


@needs_shared("vqax-test.json")
def test_vqax_reference_parsing_and_accuracy():
    items = load_json(shared_data("vqax-test.json"))[:200]
    for it in items:
        for ref in it["response"]:
            p = parse_nle(ref)
            assert p.parsed and M.answer_accuracy(p.answer, it["answer"]) == 1.0, ref
            assert p.explanation and not p.explanation.lower().startswith("because")


@needs_shared("dgpref-published", "mmhal-reviews")
def test_mmhal_published_reviews_match_reference_table():
    d = shared_data("dgpref-published", "mmhal-reviews")
    llava = M.mmhal_scores(load_json(d / "llava-dgpref_mmhal_gpt4-reviews.json"))
    qwen = M.mmhal_scores(load_json(d / "qwen-dgpref_mmhal_gpt4-reviews.json"))
    assert (llava["n"], round(llava["score"], 2), round(llava["hallucination_rate"], 3)) == (95, 2.59, 0.358)
    assert (qwen["n"], round(qwen["score"], 2), round(qwen["hallucination_rate"], 3)) == (95, 3.19, 0.337)


@needs_shared("dgpref-published", "generations", "llava-dgpref_objhal.json")
def test_chair_on_published_objhal_generations():
    gens = load_json(shared_data("dgpref-published", "generations", "llava-dgpref_objhal.json"))
    caps = list(gens.values())[:50]
    # with every mentioned object given as ground truth, nothing is hallucinated; with none, everything is
    mentioned = [M.extract_objects(c) for c in caps]
    assert sum(map(len, mentioned)) > 50
    assert M.chair_scores(caps, mentioned)["CHAIR_i"] == 0
    allhal = M.chair_scores(caps, [[] for _ in caps])
    assert allhal["CHAIR_i"] == 1 and allhal["CHAIR_s"] == pytest.approx(sum(bool(m) for m in mentioned) / 50)


def test_chair_multiword_beats_unigram():
    s = M.chair_scores(["a teddy bear sits by a hot dog"], [["teddy bear"]])
    assert s["items"][0]["mentioned"] == ["hot dog", "teddy bear"] and s["items"][0]["hallucinated"] == ["hot dog"]


def test_world_consistency_plumbing(monkeypatch):
    "The per-item checks come from world.check_explanation; correctness from world.answer_question."
    calls = []
    def check(scene, q, e, a):
        calls.append((scene, q, e, a))
        return dict(parsed=True, explanation_true=e == "it is red", supports_answer=e == "it is red" and a == "red")
    fake = types.SimpleNamespace(check_explanation=check, answer_question=lambda s, q: "red")
    monkeypatch.setattr(M, "world", fake)          # metrics imports the world module at its top
    out = ["Because it is red. So the answer is red.", "Because it is blue. So the answer is red.", "garbage"]
    r = M.world_consistency(["s1", "s2", "s3"], ["q"] * 3, out)
    assert calls == [("s1", "q", "it is red", "red"), ("s2", "q", "it is blue", "red")]
    assert r["matrix"].as_array().tolist() == [[1, 0], [1, 0]] and r["matrix"].unknown == 1
    assert r["explanation_truth"] == 0.5


def test_world_consistency_on_real_world():
    import random
    rng = random.Random(0)
    scenes = world.make_scenes(12, seed=0)
    qs = [world.sample_question(s, rng) for s in scenes]
    texts = [world.question_text(q) for q in qs]
    good = [f"Because {world.explanations(s, q)[0]}. So the answer is {world.answer_question(s, q)}." for s, q in zip(scenes, qs)]
    r = M.world_consistency(scenes, texts, good)
    assert r["matrix"].supports_correct == 12 and r["explanation_truth"] == 1.0
    bad = [g.rsplit("So the answer is", 1)[0] + "So the answer is zebra." for g in good]
    r = M.world_consistency(scenes, texts, bad)
    assert r["matrix"].unsupported_wrong == 12 and r["matrix"].consistency == 0
    r = M.world_consistency(scenes, texts, ["no grammar"] * 12)
    assert r["matrix"].unknown == 12 and r["matrix"].judged == 0


def test_chair_on_world_vocabulary():
    table = M.world_synonyms()
    scene = world.make_scenes(1, seed=3)[0]
    gt = M.scene_objects(scene)
    assert gt and set(gt) <= set(world.CATEGORIES)
    present, absent = gt[0], next(c for c in world.CATEGORIES if c not in gt)
    cap = f"There are two {world.plural(present)} and a red {absent}."
    s = M.chair_scores([cap], [gt], table)
    assert s["items"][0] == dict(mentioned=sorted([present, absent]), hallucinated=[absent])
    assert s["CHAIR_i"] == 0.5 and s["CHAIR_s"] == 1.0


def test_lexical_proxy_is_labelled_and_abstains_on_yes_no():
    r = M.judge_consistency(["What is this?", "Is it red?"],
                            ["Because it has a shower head. So the answer is shower.", "Because it is red. So the answer is yes."],
                            ["shower", "yes"])
    assert r["is_proxy"] and r["judge"] == "lexical_proxy" and r["supports"] == [True, None]
    custom = M.judge_consistency(["q"], ["Because x. So the answer is y."], ["y"], judge=lambda q, e, a: False, judge_name="nli")
    assert not custom["is_proxy"] and custom["matrix"].unsupported_correct == 1


def test_nli_judge_missing_path():
    with pytest.raises(FileNotFoundError, match="no model"): M.nli_judge("/nonexistent/nli")


@java
def test_alttext_meteor_and_cider_multiref():
    preds = ["a red car on the road", "a dog on grass", ""]
    refs = [["a red car is on the road", "the red car"], ["a dog on the grass"], ["two cats sleeping"]]
    s = M.alttext_scores(preds, refs)
    assert 0 < s["METEOR"] < 1 and s["CIDEr"] > 0 and s["n"] == 3
    assert s["BLEU-4gram_only"] <= s["BLEU-1"]
    assert s["edit_distance"] == pytest.approx((1 + 1 + 3) / 3)


def test_sentence_bleu_matches_nltk():
    "Our multi-reference sentence BLEU equals nltk's (unsmoothed) for BLEU-1, cumulative BLEU-4 and 4-gram-only."
    import random, warnings
    from nltk.translate.bleu_score import sentence_bleu
    rng, V = random.Random(0), "a b c d e f".split()
    for _ in range(200):
        h = [rng.choice(V) for _ in range(rng.randint(1, 9))]
        rs = [[rng.choice(V) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 3))]
        for w in [(1, 0, 0, 0), (.25,) * 4, (0, 0, 0, 1)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert M._bleu(*M._bleu_stats(h, rs), w) == pytest.approx(sentence_bleu(rs, h, weights=w), abs=1e-12)
