"""DGPref's scoring and pairing, pinned by behaviour on hand-built verdicts, scenes and step files.

The release's verdict codes: +1 supported, -1 refuted, 0 dropped (not asked / not answered), -2 absent (the object
a check presupposes is not there). Only +1 and -1 are *verified*; a caption's score is -(refuted)/(verified).
"""
import json
from pathlib import Path

import pytest
from PIL import Image

from mllm_nle.recipes import dgpref_experts as E
from mllm_nle.recipes.dgpref import (ABSENT, DROPPED, REFUTED, SUPPORTED, DGPrefConfig, build_preference_pairs, caption_score)
from mllm_nle.recipes.dgpref_pipeline import (JsonlStore, caption_prompts, caption_truth, exact_pairs_quality, merge_programs,
                                              pair_quality, pair_stage, preference_records, records_quality, verdict_counts,
                                              CAPTION_PROMPTS)
from mllm_nle.world import Obj, Scene


def scene():
    "A red small circle (top left, label OK), a blue large square (top right), a green large circle (bottom)."
    return Scene("s0", [Obj("circle", "red", "small", 0, 0, label="OK"), Obj("square", "blue", "large", 0, 2),
                        Obj("circle", "green", "large", 2, 1)])


# ---------------------------------------------------------------- the score: "not verified" is never "refuted"
def test_absent_and_dropped_checks_are_not_refuted():
    assert caption_score({"object": [ABSENT, ABSENT], "count": [DROPPED]}) == 0.0          # nothing verified: 0, not -1
    assert caption_score({"object": [REFUTED, ABSENT]}) == -1.0                            # -1 of 1 verified, not -1/2 or -2/2
    assert caption_score({"object": [SUPPORTED, ABSENT, ABSENT]}) == 0.0                   # 0 of 1, not -2/3
    assert caption_score({"object": [SUPPORTED, REFUTED, DROPPED], "count": [ABSENT, REFUTED]}) == pytest.approx(-2 / 3)


def test_score_counts_only_the_configured_aspects_and_repeats():
    v = {"object": [SUPPORTED], "relation": [REFUTED], "count": [REFUTED]}
    assert caption_score(v) == pytest.approx(-1 / 2)                       # relation is not a default aspect
    assert caption_score(v, ["object", "relation", "count"]) == pytest.approx(-2 / 3)
    assert caption_score(v, ["object"]) == 0.0
    assert caption_score(v, ["count", "count", "object"]) == pytest.approx(-2 / 3)      # an aspect listed twice counts twice
    assert caption_score({}, ["object"]) == 0.0


def test_score_refuses_unknown_aspects_and_codes():
    with pytest.raises(ValueError, match="unknown aspect 'colour'"): caption_score({}, ["colour"])
    with pytest.raises(ValueError, match=r"aspect 'object' has verdict\(s\) \[2\]"): caption_score({"object": [1, 2]})


# ---------------------------------------------------------------- pairs point from the better caption to the worse
def test_pairs_point_from_the_higher_score_to_the_lower():
    assert build_preference_pairs([-0.5, 0.0, -1.0], 0.3) == [(1, 0), (0, 2), (1, 2)]
    for c, r in build_preference_pairs([-0.2, -0.9, 0.0, -0.6], 0.3):
        assert [-0.2, -0.9, 0.0, -0.6][c] > [-0.2, -0.9, 0.0, -0.6][r]


def test_pairs_need_the_minimum_gap_and_never_pair_ties():
    assert build_preference_pairs([0.0, -0.3], 0.3) == [(0, 1)]          # a gap of exactly min_gap pairs
    assert build_preference_pairs([0.0, -0.29], 0.3) == []
    assert build_preference_pairs([-0.5, -0.5, -0.5], 0.3) == []
    assert build_preference_pairs([-1.0, 0.0], 0.5) == [(1, 0)]
    assert build_preference_pairs([], 0.3) == [] and build_preference_pairs([0.0], 0.3) == []
    with pytest.raises(ValueError, match="min_gap must be > 0, got 0"): build_preference_pairs([0.0, -1.0], 0)


def _stores(tmp_path, verdicts, captions, scene_id=None):
    cap = JsonlStore(tmp_path/"captions.jsonl")
    cap.append([dict(id="img1", image="img1.png", scene_id=scene_id, prompts=[f"p{k}" for k in range(len(captions))], captions=captions)])
    claims = JsonlStore(tmp_path/"claims.jsonl")
    claims.append([dict(id="img1", decompositions=[{"claims": {"entity": ["circle"] if k else []}} for k in range(len(captions))])])
    ver = JsonlStore(tmp_path/"verdicts.jsonl")
    ver.append([dict(id="img1", verdicts=verdicts)])
    return cap, claims, ver


VERDICTS = [{"object": [SUPPORTED, SUPPORTED], "count": [ABSENT]},     # 0 refuted of 2: score 0
            {"object": [SUPPORTED, REFUTED]},                          # -1/2
            {"object": [REFUTED, REFUTED], "attribute": [DROPPED]},    # -1
            {"object": [ABSENT, ABSENT], "count": [DROPPED]}]          # nothing verified: 0
CAPTIONS = ["There is a red circle.", "There is a blue circle. There is a square.", "There is a star.", "There is a star. There are two circles."]


def test_pair_stage_scores_and_pairs_each_image(tmp_path):
    cap, claims, ver = _stores(tmp_path, VERDICTS, CAPTIONS, scene_id="s0")
    out = JsonlStore(tmp_path/"pairs.jsonl")
    rep = pair_stage(DGPrefConfig(), cap, claims, ver, out, {"s0": scene()})
    rec = out["img1"]
    assert rec["scores"] == [0.0, -0.5, -1.0, 0.0]
    assert [tuple(p) for p in rec["pairs"]] == [(0, 1), (0, 2), (1, 2), (3, 1), (3, 2)]
    assert rec["no_claims"] == [True, False, False, False]
    assert rec["n_false"] == [0, 1, 1, 1] and rec["n_true"] == [1, 1, 0, 1]         # the world's exact sentence truth
    assert rep["scored"] == 1 and rep["pairs"] == 5
    assert pair_stage(DGPrefConfig(), cap, claims, ver, out)["scored"] == 0          # done ids are not redone


def test_preference_records_choose_the_better_caption(tmp_path):
    cap, claims, ver = _stores(tmp_path, VERDICTS, CAPTIONS)
    out = JsonlStore(tmp_path/"pairs.jsonl")
    pair_stage(DGPrefConfig(), cap, claims, ver, out)
    (tmp_path/"images").mkdir(); Image.new("RGB", (4, 4)).save(tmp_path/"images"/"img1.png")
    recs = preference_records(out, cap, tmp_path, "oracle")
    assert [(r["chosen"], r["rejected"]) for r in recs] == [(CAPTIONS[0], CAPTIONS[1]), (CAPTIONS[0], CAPTIONS[2]),
                                                          (CAPTIONS[1], CAPTIONS[2]), (CAPTIONS[3], CAPTIONS[1]), (CAPTIONS[3], CAPTIONS[2])]
    assert all(r["chosen_score"] > r["rejected_score"] for r in recs)
    assert recs[0]["id"] == "img1:0>1" and recs[0]["prompt"] == "p0" and recs[0]["rejected_prompt"] == "p1"
    assert recs[0]["expert"] == "oracle" and recs[0]["image"] == str((tmp_path/"images"/"img1.png").resolve())
    assert recs[0]["scene_id"] is None


def test_preference_records_skip_identical_samples_and_share_a_prompt(tmp_path):
    cap, claims, ver = _stores(tmp_path, VERDICTS[:2], ["A circle.", "A circle."])
    cap.records["img1"]["prompts"] = ["p", "p"]
    out = JsonlStore(tmp_path/"pairs.jsonl")
    pair_stage(DGPrefConfig(), cap, claims, ver, out)
    Image.new("RGB", (4, 4)).save(tmp_path/"img1.png")
    assert [list(p) for p in out["img1"]["pairs"]] == [[0, 1]] and preference_records(out, cap, tmp_path, "x") == []
    cap.records["img1"]["captions"] = ["A circle.", "A star."]
    (r,) = preference_records(out, cap, tmp_path, "x")
    assert "rejected_prompt" not in r and r["prompt"] == "p"


def test_pair_quality_counts_pairs_by_false_sentences(tmp_path):
    st = JsonlStore(tmp_path/"q.jsonl")
    st.append([dict(id="a", pairs=[[0, 1], [0, 2], [2, 1]], n_false=[0, 2, 0], n_true=[3, 1, 2]),
               dict(id="b", pairs=[[1, 0]], n_false=[1, 1], n_true=[0, 4]),
               dict(id="c", pairs=[], n_false=[0], n_true=[1]),
               dict(id="d", pairs=[[0, 1]])])                                 # no world truth: not counted
    q = pair_quality(st, "oracle")
    assert q["n_pairs"] == 4 and q["expert"] == "oracle"
    assert (q["fewer_false"], q["same"], q["more_false"]) == (pytest.approx(2 / 4), pytest.approx(2 / 4), 0.0)
    assert q["true_chosen"] == pytest.approx((3 + 3 + 2 + 4) / 4) and q["true_rejected"] == pytest.approx((1 + 2 + 1 + 0) / 4)
    assert q["images_with_pairs"] == 3
    empty = JsonlStore(tmp_path/"e.jsonl")
    assert pair_quality(empty, "x") | {"expert": None} == dict(expert=None, n_pairs=0, fewer_false=None, same=None, more_false=None,
                                                             true_chosen=None, true_rejected=None, images_with_pairs=0)


def test_records_quality_and_the_exact_ceiling(tmp_path):
    sc = {"s0": scene()}
    q = records_quality([dict(scene_id="s0", chosen=CAPTIONS[0], rejected=CAPTIONS[2]),
                         dict(scene_id="s0", chosen=CAPTIONS[2], rejected=CAPTIONS[1])], sc, "edit")
    assert (q["n_pairs"], q["fewer_false"], q["same"]) == (2, 0.5, 0.5) and q["expert"] == "edit"
    cap = JsonlStore(tmp_path/"c.jsonl")
    cap.append([dict(id="img1", scene_id="s0", captions=CAPTIONS)])
    q = exact_pairs_quality(DGPrefConfig(), cap, sc)
    # exact scores: -0/1, -1/2, -1/1, -1/2 → pairs (0,1), (0,2), (0,3), (1,2), (3,2); (1,2) and (3,2) have as many false sentences
    assert q["n_pairs"] == 5 and q["more_false"] == 0.0 and q["fewer_false"] == pytest.approx(3 / 5) and q["same"] == pytest.approx(2 / 5)


def test_caption_truth_counts_false_true_and_unparsed_sentences():
    assert caption_truth(scene(), "There is a blue circle. There is a square. The sky is blue.") == dict(n_false=1, n_true=1, n_unparsed=1)


def test_verdict_counts_per_aspect(tmp_path):
    st = JsonlStore(tmp_path/"v.jsonl")
    st.append([dict(id="a", verdicts=VERDICTS)])
    assert verdict_counts(st) == {"object": {"1": 3, "-1": 3, "0": 0, "-2": 2}, "count": {"1": 0, "-1": 0, "0": 1, "-2": 1},
                                  "attribute": {"1": 0, "-1": 0, "0": 1, "-2": 0}}


def test_merge_programs_dedups_checks_and_indexes_back():
    merged, index = merge_programs([{"object": ["circle", "star"]}, {"object": ["star", "square"], "count": [[2, "circles"]]},
                                    {"count": [[2, "circles"], [3, "stars"]]}])
    assert merged == {"object": ["circle", "star", "square"], "count": [[2, "circles"], [3, "stars"]]}
    assert index == [{"object": [0, 1]}, {"object": [1, 2], "count": [0]}, {"count": [0, 1]}]


def test_caption_prompts_shared_or_one_per_template():
    shared = caption_prompts(DGPrefConfig(n_samples=3), "img1")
    assert len(shared) == 3 and len(set(shared)) == 1 and shared[0] in CAPTION_PROMPTS
    assert caption_prompts(DGPrefConfig(n_samples=3, shared_prompt=False), "img1") == list(CAPTION_PROMPTS[:3])
    assert caption_prompts(DGPrefConfig(n_samples=10, shared_prompt=False), "x")[8:] == list(CAPTION_PROMPTS[:2])


# ---------------------------------------------------------------- the oracle expert on a hand-built scene
def test_oracle_object_count_attribute_scale_text():
    v = E.OracleExpert().verify_one(scene(), {
        "object": ["circle", "star", "shapes"], "count": [[2, "circles"], [1, "circles"], [1, "star"]],
        "attribute": [["red", "circle"], ["blue", "circle"], ["red", "star"]],
        "scale": [["small", "circle"], ["small", "square"], ["large", "star"]], "text": ["ok.", "GO"]})
    assert v["object"] == [SUPPORTED, REFUTED, SUPPORTED]
    assert v["count"] == [SUPPORTED, REFUTED, ABSENT]
    assert v["attribute"] == [SUPPORTED, REFUTED, ABSENT]
    assert v["scale"] == [SUPPORTED, REFUTED, ABSENT]
    assert v["text"] == [SUPPORTED, REFUTED]
    assert v["spatial"] == [] and v["relation"] == []


def test_oracle_spatial_fixed_and_as_released():
    prog = {"spatial": [["circle", "left", "square", ""], ["square", "left", "circle", ""], ["square", "right", "circle", ""],
                        ["square", "top", "circle", ""], ["circle", "bottom", "square", ""], ["star", "left", "circle", ""],
                        ["circle", "left", "image", "at the top left of"], ["square", "left", "image", "at the right of"],
                        ["circle", "bottom", "image", "at the bottom of"], ["square", "bottom", "image", "at the bottom of"]]}
    fixed = E.OracleExpert().verify_one(scene(), prog)["spatial"]
    released = E.OracleExpert(official_spatial=True).verify_one(scene(), prog)["spatial"]
    assert fixed == [SUPPORTED, REFUTED, SUPPORTED, SUPPORTED, SUPPORTED, ABSENT, SUPPORTED, REFUTED, SUPPORTED, REFUTED]
    assert released == [SUPPORTED, REFUTED, SUPPORTED, REFUTED, REFUTED, ABSENT, SUPPORTED, REFUTED, REFUTED, REFUTED]   # top inverted, bottom never


def test_oracle_relations():
    v = E.OracleExpert().verify_one(scene(), {"relation": [["circle", "in the same row as", "square"], ["square", "in the same column as", "circle"],
                                                           ["circle", "in the center of", "image"], ["star", "in the same row as", "circle"],
                                                           ["circle", "next to", "square"], ["circle", "in the same row as", "star"],
                                                           ["circle", "in the same column as", "circles"]]})["relation"]
    assert v == [SUPPORTED, REFUTED, REFUTED, ABSENT, REFUTED, ABSENT, REFUTED]   # one circle is not in its own column with itself
    column = Scene("k", [Obj("star", "red", "small", 1, 0), Obj("circle", "blue", "small", 0, 0)])
    assert E.OracleExpert().verify_one(column, {"relation": [["star", "in the same column as", "circle"], ["star", "next to", "circle"],
                                                             ["star", "in the same row as", "circle"]]})["relation"] == [SUPPORTED, REFUTED, REFUTED]
    centre = Scene("c", [Obj("star", "red", "small", 1, 1)])
    assert E.OracleExpert().verify_one(centre, {"relation": [["star", "in the center of", "image"]]})["relation"] == [SUPPORTED]


def test_oracle_needs_the_scene():
    with pytest.raises(ValueError, match="item 'x' has no 'scene'"): E.OracleExpert().verify([{"id": "x"}], [{}])
    assert E.OracleExpert().verify([{"id": "a", "scene": scene()}], [{"object": ["star"]}])[0]["object"] == [REFUTED]


def test_world_nouns():
    assert [E.world_category(n) for n in ("circle", "Crosses", "red circle", "shapes", "big red thing", "dog", "")] == \
           ["circle", "cross", "circle", "*", "*", None, None]
    assert len(E.world_objects(scene(), "circles")) == 2 and len(E.world_objects(scene(), "objects")) == 3
    assert E.world_objects(scene(), "dog") == []
    assert E.cell_box(Obj("star", "red", "small", 2, 1)) == (1 / 3, 2 / 3, 2 / 3, 1.0)


def test_spatial_rules_on_boxes():
    a, b = (0, 0, 20, 20), (60, 50, 80, 90)            # centres (10, 10) and (70, 70)
    S = (100, 100)
    assert E.spatial_holds(a, b, "left", S) and not E.spatial_holds(b, a, "left", S)
    assert E.spatial_holds(b, a, "right", S) and not E.spatial_holds(a, b, "right", S)
    assert E.spatial_holds(a, b, "top", S) and not E.spatial_holds(b, a, "top", S)
    assert E.spatial_holds(b, a, "bottom", S) and not E.spatial_holds(a, b, "bottom", S)
    assert E.spatial_holds(b, a, "top", S, official=True) and not E.spatial_holds(b, a, "bottom", S, official=True)
    for k in ("left", "right", "top", "bottom"): assert not E.spatial_holds(a, a, k, S), k    # strict: a box is not beside itself
    assert not E.spatial_holds(a, b, "near", S)
    assert not E.spatial_holds(a, (20, 50, 20, 90), "near", S) and not E.spatial_holds(a, (50, 20, 90, 20), "near", S)   # 10 % exactly
    assert not E.spatial_holds(a, (20, 40, 24, 90), "near", S)        # centres 12 px apart in x (and 55 in y): not near
    assert not E.spatial_holds(a, (40, 2, 90, 42), "near", S)         # 12 px apart in y: not near
    assert E.spatial_holds(a, (50, 16, 90, 20), "near", S)            # 8 px apart in y: near (centres are midpoints)
    assert E.spatial_holds(a, (15, 50, 19, 90), "near", S)          # |dx| = 7 px of 100 < 10 %
    assert E.spatial_holds(a, (50, 4, 90, 18), "near", S)           # |dy| = 1 px
    assert not E.spatial_holds(a, (12, 50, 16, 90), "near", (10, 100))   # 4 px of 10 = 40 %
    with pytest.raises(ValueError, match="unknown spatial kind 'over'"): E.spatial_holds(a, b, "over")
    assert E.spatial_verdict([a], [b], "left", S) == SUPPORTED and E.spatial_verdict([b], [a], "left", S) == REFUTED
    assert E.spatial_verdict([b, a], [b], "left", S) == SUPPORTED          # any pair
    assert E.spatial_verdict([a], [b], "top", S) == SUPPORTED           # fixed rules unless told otherwise
    assert E.spatial_verdict([a], [b], "top", S, official=True) == REFUTED
    assert E.spatial_verdict([], [b], "left", S) == ABSENT and E.spatial_verdict([a], [], "left", S) == ABSENT


def test_scale_rules_relative_to_the_image():
    S = (100, 200)
    wide, tall, tiny = (0, 0, 60, 20), (0, 0, 20, 100), (0, 0, 20, 40)      # (w, h) fractions: (.6, .1), (.2, .5), (.2, .2)
    assert [E.scale_verdict([wide], s, S) for s in ("large", "long", "small", "short", "tall")] == [SUPPORTED, SUPPORTED, REFUTED, REFUTED, REFUTED]
    assert [E.scale_verdict([tall], s, S) for s in ("large", "long", "small", "tall")] == [SUPPORTED, REFUTED, REFUTED, SUPPORTED]
    assert [E.scale_verdict([tiny], s, S) for s in ("large", "small", "short")] == [REFUTED, SUPPORTED, SUPPORTED]
    assert E.scale_verdict([tiny, wide], "large", S) == SUPPORTED and E.scale_verdict([], "large", S) == ABSENT
    assert E.scale_verdict([(0, 0, 41, 10)], "large", S) == SUPPORTED and E.scale_verdict([(0, 0, 40, 10)], "large", S) == REFUTED
    assert E.scale_verdict([(0, 0, 29, 59)], "small", S) == SUPPORTED and E.scale_verdict([(0, 0, 30, 10)], "small", S) == REFUTED
    assert E.scale_verdict([(0, 0, 10, 101)], "long", S) == SUPPORTED and E.scale_verdict([(0, 0, 10, 100)], "long", S) == REFUTED
    assert E.scale_verdict([(0, 0, 10, 81)], "tall", S) == SUPPORTED and E.scale_verdict([(0, 0, 10, 80)], "tall", S) == REFUTED
    # the thresholds are strict (a box of exactly 0.4 is not large, 0.3 not small, 0.5 not long)
    assert E.scale_verdict([(0, 0, 10, 80)], "large", S) == REFUTED and E.scale_verdict([(0, 0, 10, 60)], "small", S) == REFUTED
    assert E.scale_verdict([(0, 0, 50, 10)], "long", S) == REFUTED and E.scale_verdict([(0, 0, 30, 10)], "short", S) == REFUTED
    assert E.scale_verdict([(0, 0, 10, 60)], "short", S) == REFUTED and E.scale_verdict([tall], "short", S) == REFUTED
    # width and height are x2 - x1 and y2 - y1, not sums: a small box far from the origin stays small
    assert E.scale_verdict([(60, 150, 80, 170)], "small", S) == SUPPORTED and E.scale_verdict([(60, 150, 80, 170)], "large", S) == REFUTED
    assert E.scale_verdict([(10, 100, 20, 190)], "tall", S) == SUPPORTED and E.scale_verdict([(50, 0, 95, 10)], "large", S) == SUPPORTED
    with pytest.raises(ValueError, match="unknown scale 'wide'"): E.scale_verdict([wide], "wide", S)


class _Fixed(E.Expert):
    def __init__(self, out): self.out = out
    def verify(self, items, programs): return json.loads(json.dumps(self.out))


def test_noisy_expert_flips_only_verified_codes():
    items, progs = [{"id": "a"}], [{"object": ["circle", "star", "square", "ring"]}]
    out = [{"object": [SUPPORTED, REFUTED, ABSENT, DROPPED]}]
    assert E.NoisyExpert(_Fixed(out), 1.0).verify(items, progs) == [{"object": [REFUTED, SUPPORTED, ABSENT, DROPPED]}]
    assert E.NoisyExpert(_Fixed(out), 0.0).verify(items, progs) == out
    many = [{"object": [SUPPORTED] * 400}]
    flipped = E.NoisyExpert(_Fixed(many), 0.3, seed=1).verify([{"id": "b"}], [{"object": [f"o{k}" for k in range(400)]}])[0]["object"]
    assert 0.22 < flipped.count(REFUTED) / 400 < 0.38                   # about the noise rate
    again = E.NoisyExpert(_Fixed(many), 0.3, seed=1).verify([{"id": "b"}], [{"object": [f"o{k}" for k in range(400)]}])[0]["object"]
    assert again == flipped                                             # seeded
    assert E.NoisyExpert(_Fixed(out), 0.1).name == "noisy0.1"
    with pytest.raises(Exception, match=r"noise must lie in \[0, 1\], got 1.5"): E.NoisyExpert(_Fixed(out), 1.5)
