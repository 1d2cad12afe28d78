"""DGPref's sampling temperature reaches the sampler: near zero it gives the greedy caption, higher it gives more
distinct samples (and the samples are seeded, stored with their prompts, and not redone)."""
import pytest
import torch

from mllm_nle import models
from mllm_nle.data import open_image
from mllm_nle.recipes.dgpref import DGPrefConfig
from mllm_nle.recipes.dgpref_pipeline import JsonlStore, caption_prompts, sample_captions
from mllm_nle.train import toy_images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return models.resolve_backbone("tiny:llava:xs")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return [dict(id=sc.id, image=path, scene_id=sc.id) for sc, path in toy_images(2, tmp_path_factory.mktemp("pool"))]


def _cfg(t):
    return DGPrefConfig(n_samples=4, temperature=t, caption_max_new_tokens=8, sample_batch_size=8)


def _sample(policy, items, t, path):
    store = JsonlStore(path)
    rep = sample_captions(_cfg(t), policy, items, store, progress=False)
    return store, rep


def test_near_zero_temperature_gives_the_greedy_caption(policy, items, tmp_path):
    store, rep = _sample(policy, items, 1e-4, tmp_path/"c.jsonl")
    assert rep["sampled"] == 2 and rep["done_before"] == 0
    for it in items:
        ex = [dict(image=open_image(it), image_key=it["id"], prompt=p) for p in caption_prompts(_cfg(1e-4), it["id"])]
        greedy = models.generate(policy.model, policy.processor, ex, max_new_tokens=8)
        assert store[it["id"]]["captions"] == greedy
        assert store[it["id"]]["prompts"] == caption_prompts(_cfg(1e-4), it["id"]) and store[it["id"]]["scene_id"] == it["id"]


def test_a_higher_temperature_gives_more_distinct_samples(policy, items, tmp_path):
    cold, _ = _sample(policy, items, 1e-4, tmp_path/"cold.jsonl")
    hot, _ = _sample(policy, items, 3.0, tmp_path/"hot.jsonl")
    distinct = lambda st: sum(len(set(st[it["id"]]["captions"])) for it in items)
    assert distinct(cold) == 2 and distinct(hot) > 4          # 1 per image when cold; 4 samples per image when hot


def test_samples_are_seeded_and_finished_images_are_skipped(policy, items, tmp_path):
    a, _ = _sample(policy, items, 1.0, tmp_path/"a.jsonl")
    b, _ = _sample(policy, items, 1.0, tmp_path/"b.jsonl")
    assert all(a[it["id"]]["captions"] == b[it["id"]]["captions"] for it in items)
    _, rep = _sample(policy, items, 1.0, tmp_path/"a.jsonl")
    assert rep["sampled"] == 0 and rep["done_before"] == 2
