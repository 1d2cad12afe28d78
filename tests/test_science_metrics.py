"""Metric scoring pinned on hand-computed cases: CHAIR with its synonym table, consistency, POPE, MMHal, the
alt-text BLEU / ROUGE-L / edit distance, VQA accuracy, and AMBER's generative and discriminative counts."""
import math

import pytest

from mllm_nle import metrics as M
from mllm_nle.amber import AmberData, NLPComponents, amber_discriminative, amber_generative, score_generative_item
from mllm_nle.core import DataFileError


# ---------------------------------------------------------------- CHAIR: synonyms on both sides
def test_chair_ground_truth_given_as_synonyms_is_normalised():
    "GT 'puppy' and 'sofa' are the categories dog and couch: a caption naming 'dog' and 'couch' hallucinates nothing."
    s = M.chair_scores(["A dog sleeps on the couch."], [["puppy", "sofa"]])
    assert s["items"][0] == dict(mentioned=["couch", "dog"], hallucinated=[])
    assert (s["CHAIR_s"], s["CHAIR_i"], s["n_mentions"], s["n_hallucinated"]) == (0.0, 0.0, 2, 0)


def test_chair_caption_synonyms_and_plurals_map_to_categories():
    s = M.chair_scores(["Two puppies and a kitten near the people.", "A man rides a motorbike past a traffic light."],
                       [["dog", "person"], ["persons", "motorcycles"]])
    assert s["items"][0] == dict(mentioned=["cat", "dog", "person"], hallucinated=["cat"])
    assert s["items"][1] == dict(mentioned=["motorcycle", "person", "traffic light"], hallucinated=["traffic light"])
    assert s["CHAIR_s"] == 1.0 and s["CHAIR_i"] == pytest.approx(2 / 6) and s["n"] == 2


def test_chair_counts_a_category_once_per_caption_and_keeps_unknown_gt():
    s = M.chair_scores(["A dog, a puppy and another dog.", "Nothing here.", "A zebra."], [["dog"], [], ["okapi", "zebra"]])
    assert [it["mentioned"] for it in s["items"]] == [["dog"], [], ["zebra"]]
    assert s["CHAIR_s"] == 0.0 and s["CHAIR_i"] == 0.0 and s["n_mentions"] == 2
    assert M.chair_scores([], []) == dict(CHAIR_s=None, CHAIR_i=None, n=0, n_mentions=0, n_hallucinated=0, items=[])
    assert M.chair_scores(["Nothing."], [[]])["CHAIR_i"] is None
    with pytest.raises(ValueError, match="2 captions, 1 GT lists"): M.chair_scores(["a", "b"], [[]])


def test_chair_with_the_worlds_table():
    t = M.world_synonyms({"circle": ["disc"]})
    assert t["circle"] == ["circle", "disc"] and t["star"] == ["star"]
    s = M.chair_scores(["Two discs and a star."], [["circles"]], t)
    assert s["items"][0] == dict(mentioned=["circle", "star"], hallucinated=["star"])


def test_extract_objects_longest_match_first_in_order():
    assert M.extract_objects("A hot dog next to a dog and a teddy bear and a bear.") == ["hot dog", "dog", "teddy bear", "bear"]
    assert M.extract_objects("") == [] and M.extract_objects("blah") == []
    assert M.extract_objects("the bikes", {"bicycle": ["bike"]}) == ["bicycle"]


def test_synonym_index_maps_every_form_and_keeps_the_first_owner():
    idx = M.synonym_index({"dog": ["puppy", "hot dog"], "food": ["hot dog", "pizza"]})
    assert idx[("dog",)] == "dog" and idx[("puppy",)] == "dog" and idx[("hot", "dog")] == "dog" and idx[("pizza",)] == "food"
    assert idx[("food",)] == "food"


def test_singularize():
    cases = {"people": "person", "berries": "berry", "boxes": "box", "dishes": "dish", "churches": "church", "glasses": "glass",
             "buses": "bus", "bus": "bus", "glass": "glass", "cactus": "cactus", "this": "this", "cats": "cat", "ties": "tie",
             "skis": "ski", "gas": "gas", "Dogs": "dog", "quizzes": "quizz", "toys": "toy", "pies": "pie", "knives": "knife"}
    assert {w: M.singularize(w) for w in cases} == cases


def test_scene_objects_from_a_scene_graph_dict_or_a_scene():
    from types import SimpleNamespace as NS
    from mllm_nle.world import Obj, Scene
    assert M.scene_objects({"objects": [{"category": "star"}, {"shape": "circle"}, {"category": "star"}]}) == ["circle", "star"]
    assert M.scene_objects(Scene("s", [Obj("ring", "red", "small", 0, 0), Obj("cross", "blue", "large", 1, 1)])) == ["cross", "ring"]
    assert M.scene_objects(NS(objects=[NS(shape="star"), NS(category="ring")])) == ["ring", "star"]   # objects named by `shape`


# ---------------------------------------------------------------- consistency
def test_consistency_counts_unjudged_items_as_not_supporting():
    m = M.ConsistencyMatrix.from_items([True, True, False, None, False, None], [True, False, True, True, False, False])
    assert m.as_array().tolist() == [[1, 1], [1, 1]] and m.unknown == 2
    assert (m.judged, m.n) == (4, 6)
    assert m.consistency == pytest.approx(2 / 6) and m.consistency_judged == pytest.approx(2 / 4)
    assert m.to_dict() == dict(supports_correct=1, supports_wrong=1, unsupported_correct=1, unsupported_wrong=1, unknown=2,
                               judged=4, consistency=pytest.approx(1 / 3), consistency_judged=0.5)
    e = M.ConsistencyMatrix()
    assert e.consistency is None and e.consistency_judged is None
    only_unknown = M.ConsistencyMatrix.from_items([None], [True])
    assert only_unknown.consistency == 0.0 and only_unknown.consistency_judged is None
    with pytest.raises(ValueError, match="2 judgements, 1 correctness flags"): M.ConsistencyMatrix.from_items([True, False], [True])


def test_judge_consistency_leaves_unparsed_outputs_unjudged():
    outs = ["Because the circle is red. So the answer is red.", "red", "Because it is blue. So the answer is green."]
    r = M.judge_consistency(["q"] * 3, outs, ["red", "red", "blue"])
    assert r["supports"] == [True, None, False] and r["judge"] == "lexical_proxy" and r["is_proxy"]
    m = r["matrix"]
    assert (m.supports_correct, m.unknown, m.unsupported_wrong) == (1, 1, 1)
    r = M.judge_consistency(["q"] * 2, ["red", outs[0]], ["red", "red"], judge=lambda q, e, a: True)
    assert r["supports"] == [None, True] and r["matrix"].unknown == 1      # an unparsed output is never judged, whatever the judge
    def asks_the_question(q, e, a): return q == "Which colour?"
    r = M.judge_consistency(["Which colour?", "Other?"], outs[:1] * 2, ["red", "red"], judge=asks_the_question)
    assert r["supports"] == [True, False] and r["judge"] == "asks_the_question" and not r["is_proxy"]
    class Callable:
        def __call__(self, q, e, a): return True
    assert M.judge_consistency(["q"], outs[:1], ["red"], judge=Callable())["judge"] == "judge"
    r = M.judge_consistency(["q"], outs[:1], ["red"], judge=lambda q, e, a: False, judge_name="nli")
    assert r["judge"] == "nli" and not r["is_proxy"] and r["supports"] == [False]


def test_world_consistency_on_a_hand_built_scene():
    from mllm_nle.world import Obj, Scene
    sc, q = Scene("s", [Obj("circle", "red", "small", 0, 0), Obj("square", "blue", "large", 1, 1)]), "What color is the circle?"
    outs = ["Because the circle is red. So the answer is red.", "red",                  # supported and right; unparsed
            "Because the square is blue. So the answer is blue.",                          # true, but about another object
            "Because the circle is blue. So the answer is blue."]                          # false explanation, wrong answer
    r = M.world_consistency([sc] * 4, [q] * 4, outs)
    m = r["matrix"]
    assert (m.supports_correct, m.supports_wrong, m.unsupported_correct, m.unsupported_wrong, m.unknown) == (1, 1, 0, 1, 1)
    assert [it["supports_answer"] for it in r["items"]] == [True, None, False, True]
    assert [it["explanation_true"] for it in r["items"]] == [True, None, True, False] and r["items"][1]["parsed"] is False
    assert [it["correct"] for it in r["items"]] == [True, False, False, False]
    assert r["explanation_truth"] == pytest.approx(2 / 3)
    r = M.world_consistency([sc] * 4, [q] * 4, outs, answers=["red", "red", "blue", "blue"])    # gold given: blue is right
    assert [it["correct"] for it in r["items"]] == [True, False, True, True]
    with pytest.raises(ValueError, match=r"lengths differ \(1, 2, 2\)"): M.world_consistency([sc], [q, q], outs[:2])
    assert M.world_consistency([sc], [q], ["red"])["explanation_truth"] is None        # nothing parsed: no truth rate


def test_lexical_proxy_judge():
    assert M.lexical_proxy_judge("q", "the circle is red", "Red.") is True
    assert M.lexical_proxy_judge("q", "the circles are red", "circle") is True       # singular forms meet
    assert M.lexical_proxy_judge("q", "the circle is red", "blue") is False
    assert M.lexical_proxy_judge("q", "yes it is", "Yes") is None and M.lexical_proxy_judge("q", "x", "") is None
    assert M.lexical_proxy_judge("q", "x", "the") is None                            # no content word


# ---------------------------------------------------------------- POPE, MMHal
def test_pope_counts_each_cell_of_the_confusion_matrix():
    "gold yes: yes yes no (tp 2, fn 1); gold no: yes no no no (fp 1, tn 3)."
    s = M.pope_scores(["yes", "Yes!", "no", "yes", "no", "No.", "no"], ["yes", "yes", "yes", "no", "no", "no", "no"])
    assert (s["tp"], s["fn"], s["fp"], s["tn"], s["n"], s["n_unknown"]) == (2, 1, 1, 3, 7, 0)
    assert s["accuracy"] == pytest.approx(5 / 7) and s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    s = M.pope_scores(["no", "yes"], ["no", "no"])                      # no gold yes: recall and F1 are 0, not 1
    assert (s["recall"], s["precision"], s["f1"]) == (0.0, 0.0, 0.0)


def test_pope_unknown_answers_and_labels():
    s = M.pope_scores(["Yes.", "Maybe.", "No", "no"], ["yes", "no", "no", " Yes "])
    assert (s["tp"], s["fp"], s["tn"], s["fn"], s["n_unknown"]) == (1, 1, 1, 1, 1)       # the unsure answer counts as yes
    assert (s["accuracy"], s["precision"], s["recall"], s["f1"], s["yes_ratio"]) == (0.5, 0.5, 0.5, 0.5, 0.5)
    s = M.pope_scores(["Maybe."], ["yes"], unknown_as="no")
    assert (s["fn"], s["precision"], s["recall"], s["f1"], s["yes_ratio"]) == (1, 0.0, 0.0, 0.0, 0.0)
    assert M.pope_scores([], [])["accuracy"] is None
    with pytest.raises(ValueError, match="label 0 is 'maybe'"): M.pope_scores(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 outputs, 2 labels"): M.pope_scores(["yes"], ["yes", "no"])


def test_mmhal_rating_needs_exactly_one_rating():
    assert M.mmhal_rating("The answer is fine.\nRating: 5") == 5
    assert M.mmhal_rating("rating: 0") == 0 and M.mmhal_rating("rating: 6") == 6
    assert M.mmhal_rating("rating: 7") is None                          # the scale is 0-6
    assert M.mmhal_rating("Rating: 2 ... rating: 4") is None and M.mmhal_rating("no score") is None and M.mmhal_rating(None) is None


def test_mmhal_scores_and_hallucination_rate():
    s = M.mmhal_scores(["rating: 6", "rating: 2", "rating: 3", "nothing"], ["a", "b", "a", "b"])
    assert s["score"] == pytest.approx((6 + 2 + 3 + 0) / 4) and s["hallucination_rate"] == pytest.approx(2 / 4)
    assert s["n"] == 4 and s["n_ambiguous"] == 1 and s["by_type"] == {"a": 4.5, "b": 1.0}
    assert M.mmhal_scores([])["hallucination_rate"] is None and M.mmhal_scores([])["n"] == 0
    assert M.mmhal_scores([])["score"] is None and "by_type" not in M.mmhal_scores(["rating: 1"])


# ---------------------------------------------------------------- VQA accuracy
def test_vqa_normalisation():
    assert M.vqa_normalize("Two  Dogs!") == "2 dogs" and M.vqa_normalize("1,000") == "1000"
    assert M.vqa_normalize("dont") == "don't" and M.vqa_normalize("It's 3.5.") == "it's 3.5"
    assert M.vqa_normalize("a\tb\nc") == "b c" and M.vqa_normalize(None) == ""


def test_answer_accuracy_exact_and_soft():
    assert M.answer_accuracy("Two", "2") == 1.0 and M.answer_accuracy("three", "2") == 0.0
    assert M.answer_accuracy("", "") == 0.0 and M.answer_accuracy("", ["", "x"]) == 0.0
    assert M.answer_accuracy("dog", ["dog"]) == 1.0 and M.answer_accuracy("dog", ["cat"]) == 0.0
    assert M.answer_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0                    # ≥ 3 others agree in every subset
    assert M.answer_accuracy("dog", ["dog", "cat"]) == pytest.approx((0 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="empty list"): M.answer_accuracy("dog", [])


# ---------------------------------------------------------------- alt-text scores
def test_rouge_l_and_edit_distance():
    assert M.rouge_l_f1(list("abcd"), list("acde")) == pytest.approx(2 * 3 / 8)
    assert M.rouge_l_f1(list("ab"), list("cd")) == 0.0 and M.rouge_l_f1([], ["a"]) == 0.0 and M.rouge_l_f1(["a"], []) == 0.0
    assert M.rouge_l_f1(list("abc"), list("abc")) == 1.0
    assert M.edit_distance(list("kitten"), list("sitting")) == 3 and M.edit_distance([], list("ab")) == 2
    assert M.edit_distance(list("ab"), []) == 2 and M.edit_distance(list("flaw"), list("lawn")) == 2


def test_alttext_bleu_by_hand():
    "hyp 'a b c', ref 'a b d e': unigrams 2/3, bigrams 1/2, no trigram; brevity exp(1 - 4/3)."
    s = M.alttext_scores(["a b c", "x y"], [["a b d e"], ["x y", "z"]], meteor=False)
    bp = math.exp(1 - 4 / 3)
    assert s["n"] == 2 and s["n_no_refs"] == 0
    assert s["BLEU-1"] == pytest.approx((2 / 3 * bp + 1.0) / 2)
    assert s["BLEU-4"] == pytest.approx((0.0 + 0.0) / 2)                 # no 3-gram in either: 0
    assert s["BLEU-4gram_only"] == 0.0
    assert s["ROUGE_L_F1"] == pytest.approx((2 * 2 / 7 + 1.0) / 2)        # LCS 'a b' of 3 + 4; 'x y' exact
    assert s["edit_distance"] == pytest.approx((2 + 0) / 2)               # c→d, +e; x y = x y
    assert s["METEOR"] is None and s["unavailable"]["METEOR"] == "not requested" and s["CIDEr"] is not None


def test_alttext_bleu4_and_corpus_bleu():
    h, r = "the cat sat on the mat", "the cat sat on a mat"
    s = M.alttext_scores([h], [r], meteor=False)
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]                                            # equal lengths: no brevity penalty
    assert s["BLEU-1"] == pytest.approx(5 / 6) and s["BLEU-4"] == pytest.approx(math.exp(sum(math.log(x) for x in p) / 4))
    s = M.alttext_scores(["the cat sat on the mat today"], ["the cat sat on the mat"], meteor=False)
    p = [6 / 7, 5 / 6, 4 / 5, 3 / 4]                                            # longer than the reference: no brevity penalty
    assert s["BLEU-4"] == pytest.approx(math.exp(sum(math.log(x) for x in p) / 4))
    assert s["BLEU-4gram_only"] == pytest.approx(3 / 4) and s["corpus_BLEU-4"] == pytest.approx(s["BLEU-4"])
    assert s["CIDEr"] is None and "at least 2 items" in s["unavailable"]["CIDEr"]


def test_alttext_clips_counts_and_picks_the_closest_reference_length():
    "hyp 'a a a a': clipped unigram matches min(4, 2) = 2 of 4; closest reference length 5 (|5-4| < |2-4|)... ties go short."
    s = M.alttext_scores(["a a a a"], [["a a b c d", "a b"]], meteor=False)
    assert s["BLEU-1"] == pytest.approx(2 / 4 * math.exp(1 - 5 / 4))
    s = M.alttext_scores(["a b c"], [["a b c d", "a b"]], meteor=False)      # |4-3| = |2-3|: the shorter, 2 → no penalty
    assert s["BLEU-1"] == pytest.approx(1.0)


def test_alttext_skips_items_without_references():
    s = M.alttext_scores(["a", "b", "c"], [["a"], ["", "  "], "c"], meteor=False)
    assert (s["n"], s["n_no_refs"]) == (2, 1) and s["BLEU-1"] == 1.0 and s["edit_distance"] == 0.0
    s = M.alttext_scores(["a"], [[""]], meteor=False)
    assert s["n"] == 0 and s["BLEU-1"] is None and s["unavailable"]["BLEU-1"] == "no item has a reference"
    with pytest.raises(ValueError, match="2 predictions, 1 references"): M.alttext_scores(["a", "b"], ["a"])
    assert M.alttext_scores([""], ["a b"], meteor=False)["BLEU-1"] == 0.0


# ---------------------------------------------------------------- AMBER
def _amber():
    ann = [dict(id=1, type="generative", truth=["person", "car"], hallu=["dog"]),
           dict(id=2, type="discriminative-hallucination", truth="no"),
           dict(id=3, type="generative", truth=["cat"], hallu=["dog"]),
           dict(id=4, type="discriminative-attribute-state", truth="yes"),
           dict(id=5, type="discriminative-relation", truth="no"),
           dict(id=6, type="discriminative-attribute-number", truth="yes")]
    assoc = {"person": ["man", "people"], "car": [], "dog": ["puppy"], "cat": [], "thing": [], "automobile": []}
    return AmberData(ann, assoc, ["thing"])


def _nlp(similar=lambda a, b: a == b):
    return NLPComponents(tokenize=str.split, tag=lambda ws: [(w, "NN" if w[0].islower() else "VB") for w in ws],
                         lemmatize=lambda w: w.strip(".,"), similar=similar, names={"tokenizer": "split"})


def test_amber_item_counts():
    "man → covers person; puppy → mentions the hallucination dog and is hallucinated; thing is a safe word; cat is hallucinated."
    d = _amber()
    it = score_generative_item(["man", "puppy", "thing", "cat", "tree"], ["person", "car"], ["dog"], d, lambda a, b: a == b)
    assert it == dict(nouns=["man", "puppy", "thing", "cat"], hallucinated=["puppy", "cat"], covered=["person"], n_truth=2,
                      cognitive=["dog"], n_hallu=1)
    near = lambda a, b: a == b or {a, b} == {"automobile", "car"}
    it = score_generative_item(["automobile", "dog"], ["person", "car"], ["dog"], d, near)
    assert it["covered"] == ["car"] and it["hallucinated"] == ["dog"] and it["cognitive"] == ["dog"]


def test_amber_generative_percentages():
    r = amber_generative([{"id": 1, "response": "man puppy thing cat"}, {"id": 3, "response": "cat Runs."},
                          {"id": 2, "response": "No"}], _amber(), _nlp(), progress=False, keep_items=True)
    assert r["CHAIR"] == pytest.approx(100 * 2 / 5) and r["Cover"] == pytest.approx(100 * 2 / 3)
    assert r["Hal"] == pytest.approx(50.0) and r["Cog"] == pytest.approx(50.0)
    assert (r["n"], r["n_nouns"], r["n_hallucinated_nouns"]) == (2, 5, 2) and [i["id"] for i in r["items"]] == [1, 3]
    assert r["components"] == {"tokenizer": "split"}
    with pytest.raises(DataFileError, match="no generative responses"): amber_generative([{"id": 2, "response": "No"}], _amber(), _nlp())


def test_amber_discriminative_with_no_as_the_positive_class():
    r = amber_discriminative([{"id": 2, "response": "No, there is not."}, {"id": 4, "response": "No."},
                              {"id": 5, "response": "Yes"}, {"id": 6, "response": "Perhaps"}, {"id": 1, "response": "a"}], _amber())
    assert r["existence"] == dict(accuracy=100.0, precision=100.0, recall=100.0, f1=100.0, yes_ratio=0.0, n=1, n_unparsed=0)
    assert r["attribute"] == dict(accuracy=0.0, precision=0.0, recall=0.0, f1=0.0, yes_ratio=0.0, n=2, n_unparsed=1)
    assert r["relation"] == dict(accuracy=0.0, precision=0.0, recall=0.0, f1=0.0, yes_ratio=100.0, n=1, n_unparsed=0)
    assert r["overall"] == dict(accuracy=25.0, precision=50.0, recall=50.0, f1=50.0, yes_ratio=25.0, n=4, n_unparsed=1)
    with pytest.raises(DataFileError, match="beyond AMBER's 6 annotations"): amber_discriminative([{"id": 7, "response": "no"}], _amber())
    with pytest.raises(DataFileError, match=r"^no discriminative responses \(AMBER ids 1005-15220\) to score$"):
        amber_discriminative([{"id": 1, "response": "no"}], _amber())
    # AMBER reads the first word only: 'There is no ...' is unparsed, not 'no'
    assert amber_discriminative([{"id": 2, "response": "There is no dog."}], _amber())["existence"]["n_unparsed"] == 1
