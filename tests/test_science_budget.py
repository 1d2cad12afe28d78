"""The gym's compute budget: every forward–backward micro-batch is counted, padding never is, and a step's tokens
scale with gradient accumulation. Expected counts come from collating each record alone (no padding then)."""
import pytest
import torch

from mllm_nle import gym, models
from mllm_nle.batches import SFTCollator
from mllm_nle.experiment import Arm, RunConfig
from mllm_nle.recipes import dgpref, mcle
from mllm_nle.train import get_method, toy_records

torch.set_num_threads(1)
SPEC = "tiny:qwen2_5_vl:xs"


@pytest.fixture(scope="module")
def bb():
    return models.resolve_backbone(SPEC)


@pytest.fixture(scope="module")
def sft_records(tmp_path_factory):
    recs = toy_records(3, tmp_path_factory.mktemp("sft"))
    recs[1]["response"] += " It is the only one in the picture, and it is easy to see."   # lengths differ: the batch pads
    return recs


def _alone(collator, records, rows_per_record=1) -> int:
    "Tokens of each record collated on its own (so without padding), summed; `rows_per_record` sequences each."
    return sum(int(collator([r])["attention_mask"].sum()) for r in records)


def test_counts_the_real_tokens_of_a_padded_batch(bb, sft_records):
    col = SFTCollator(bb.processor)
    batch = col(sft_records)
    assert batch["attention_mask"].numel() > batch["attention_mask"].sum()             # there is padding to leave out
    meter = gym.TokenMeter()
    h = gym.count_llm_tokens(bb.model, meter)
    try:
        with torch.enable_grad(): models.sequence_logps(bb.model, batch)
    finally: h.remove()
    assert meter.tokens == _alone(col, sft_records) and meter.rows == 3


def test_passes_without_gradients_are_not_counted(bb, sft_records):
    meter = gym.TokenMeter()
    h = gym.count_llm_tokens(bb.model, meter)
    try:
        with torch.no_grad(): models.sequence_logps(bb.model, SFTCollator(bb.processor)(sft_records))
    finally: h.remove()
    assert (meter.tokens, meter.rows) == (0, 0)
    meter = gym.TokenMeter()
    h = gym.count_llm_tokens(bb.model, meter); h.remove()
    with torch.enable_grad(): models.sequence_logps(bb.model, SFTCollator(bb.processor)(sft_records))
    assert meter.tokens == 0                                                            # the handle really removes the hook


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_a_step_is_every_micro_batch(bb, sft_records, grad_accum):
    "Batch size = all 3 records, so every measured batch is the whole set: tokens per step = Σ real tokens × grad_accum."
    cfg = RunConfig(batch_size=3, grad_accum=grad_accum, lora_r=4)
    t = gym.tokens_per_step(cfg, Arm("sft", lambda: get_method("sft"), sft_records), SPEC, n_batches=2)
    assert t["tokens"] == pytest.approx(_alone(SFTCollator(bb.processor), sft_records) * grad_accum)
    assert t["rows"] == pytest.approx(3 * grad_accum) and t["records"] == pytest.approx(3 * grad_accum)


def test_a_live_reference_pass_is_not_training_compute(bb, tmp_path):
    "DPO with a live reference: the policy's chosen and rejected rows count once; the no-grad reference pass not at all."
    recs = dgpref.toy_records(2, tmp_path)
    cfg = RunConfig(batch_size=2, lora_r=4)
    t = gym.tokens_per_step(cfg, Arm("dpo", lambda: get_method("dpo", reference="live"), recs), SPEC, n_batches=1)
    col = dgpref.PreferenceCollator(bb.processor)
    expected = sum(int(b["attention_mask"].sum()) for b in (col([r]) for r in recs))   # chosen + rejected of each record
    assert t["tokens"] == pytest.approx(expected) and t["rows"] == 4 and t["records"] == 2


def test_whole_group_methods_count_records_not_groups(tmp_path):
    "MCLE batches groups: 2 groups of 3 records per batch are 6 records (and 6 sequences) per step."
    recs = mcle.toy_records(6, tmp_path)
    cfg = RunConfig(batch_size=2, lora_r=4)
    t = gym.tokens_per_step(cfg, Arm("mcle", lambda: get_method("mcle", variant="multilevel"), recs), SPEC, n_batches=1)
    assert t["records"] == 6 and t["rows"] == 6


def test_plan_steps_spends_the_budget():
    assert gym.plan_steps(1000, 300.0) == 3 and gym.plan_steps(1000, 250.0) == 4 and gym.plan_steps(999, 250.0) == 3
    assert gym.plan_steps(100, 300.0) == 1                      # at least one step
    assert gym.plan_steps(10, 0.0) == 10 and gym.plan_steps(10, 0.5) == 10   # a step of < 1 token is taken as 1
    # floor division, also where the float quotient rounds up: 1070 / 97.27272727272728 is 10.999999999999999..., so 10 steps
    from fractions import Fraction
    assert Fraction(1070) / Fraction(97.27272727272728) < 11 and gym.plan_steps(1070, 97.27272727272728) == 10


def test_metric_from_rows_averages_groups_of_ratios():
    rows = [dict(suite="pope", mode="random", f1_num=2, f1_den=3), dict(suite="pope", mode="random", f1_num=0, f1_den=1),
            dict(suite="pope", mode="adversarial", f1_num=1, f1_den=4), dict(suite="vqa", correct=True, supports_answer=None),
            dict(suite="vqa", correct=False, supports_answer=True)]
    assert gym.metric_from_rows(rows, "pope_f1") == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert gym.metric_from_rows(rows, "accuracy") == pytest.approx(0.5) and gym.metric_from_rows(rows, "consistency") == pytest.approx(0.5)
    assert gym.metric_from_rows(rows, "CHAIR_i") is None                                # no caption rows
    rows += [dict(suite="pope", mode="popular", f1_num=0, f1_den=0)]
    assert gym.metric_from_rows(rows, "pope_f1") is None                                # one group undefined: the column is
    assert gym.metric_from_rows([dict(suite="vqa", correct=True)], "accuracy") == 1.0           # one item: a denominator of 1
    assert gym.item_number(None) == 0.0 and gym.item_number(True) == 1.0 and gym.item_number(3) == 3.0


def test_counts_embedding_passes_without_a_mask(bb):
    "A pass given only `inputs_embeds` (no 2-D mask) counts every position: batch × length tokens, and batch rows."
    lm = models.hf_model(bb.model).model.language_model
    meter = gym.TokenMeter()
    h = gym.count_llm_tokens(bb.model, meter)
    try:
        with torch.enable_grad():
            lm(inputs_embeds=torch.zeros(2, 5, lm.config.hidden_size))
            lm(inputs_embeds=torch.zeros(3, 4, lm.config.hidden_size))
    finally: h.remove()
    assert (meter.tokens, meter.rows) == (2 * 5 + 3 * 4, 2 + 3)


def test_sampled_batches_are_seeded_and_default_to_12(bb, sft_records):
    "Batches of 1 of 3 records of different lengths: the mean depends on which were drawn, so on the seed and their number."
    cfg, arm = RunConfig(batch_size=1, lora_r=4), Arm("sft", lambda: get_method("sft"), sft_records)
    once = gym.tokens_per_step(cfg, arm, SPEC)
    assert once == gym.tokens_per_step(cfg, arm, SPEC) == gym.tokens_per_step(cfg, arm, SPEC, n_batches=12, seed=0)
    lengths = [_alone(SFTCollator(bb.processor), [r]) for r in sft_records]
    import random
    rng = random.Random(0)
    drawn = [rng.sample(range(3), 1)[0] for _ in range(12)]
    assert once["tokens"] == pytest.approx(sum(lengths[i] for i in drawn) / 12)
    assert gym.tokens_per_step(cfg, arm, SPEC, n_batches=13) != once


def test_an_arm_with_its_own_base_is_measured_on_it(sft_records, monkeypatch):
    "An arm that starts from another model (a pretrain stage): its tokens are that model's; the run's device is used."
    devices, real = [], models.resolve_backbone
    monkeypatch.setattr(models, "resolve_backbone", lambda spec, device=None: devices.append((spec, device)) or real(spec, device))
    cfg = RunConfig(batch_size=3, lora_r=4, device="cpu")
    own = gym.tokens_per_step(cfg, Arm("sft", lambda: get_method("sft"), sft_records, base="tiny:llava:xs"), SPEC, n_batches=1)
    assert devices == [("tiny:llava:xs", "cpu")]
    assert own == gym.tokens_per_step(cfg, Arm("sft", lambda: get_method("sft"), sft_records), "tiny:llava:xs", n_batches=1)
    assert own != gym.tokens_per_step(cfg, Arm("sft", lambda: get_method("sft"), sft_records), SPEC, n_batches=1)


def test_the_method_setup_and_image_limit_apply(sft_records):
    "The method's setup runs on the method and the LoRA model that is measured; the run's image-size limit refuses images."
    from dataclasses import replace
    seen = []
    def method():
        m = get_method("sft")
        return replace(m, setup=lambda meth, model: seen.append((meth, hasattr(model, "disable_adapter"))))
    gym.tokens_per_step(RunConfig(batch_size=3, lora_r=4), Arm("sft", method, sft_records), SPEC, n_batches=1)
    assert len(seen) == 1 and seen[0][0].name == "sft" and seen[0][1]
    with pytest.raises(Exception, match="pixels"):
        gym.tokens_per_step(RunConfig(batch_size=3, lora_r=4, max_image_pixels=10), Arm("sft", lambda: get_method("sft"), sft_records), SPEC, n_batches=1)
