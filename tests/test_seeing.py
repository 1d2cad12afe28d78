"The committed seeing bases: intact, built from the module's recipe, loadable by their spec; a short build runs the same code."
import dataclasses, json, logging

import pytest

from mllm_nle import models, seeing, world


@pytest.mark.parametrize("family", sorted(seeing.SEEING))
def test_committed_base_is_intact(family):
    d = seeing.ASSETS / family
    meta = json.loads((d / "base_build.json").read_text())
    assert meta["model_sha256"] == seeing.file_sha256(d / "model.safetensors")
    assert (d / "model.safetensors").stat().st_size <= 25 * 2**20


@pytest.mark.parametrize("family", sorted(seeing.SEEING))
def test_committed_base_was_built_from_the_recipe(family):
    "A change to seeing.SEEING fails here until the committed base is rebuilt (python -m mllm_nle.seeing --family F --commit)."
    meta = json.loads((seeing.ASSETS / family / "base_build.json").read_text())
    assert meta["config"] == dataclasses.asdict(seeing.SEEING[family])
    assert meta["key"] == seeing.seeing_key(seeing.SEEING[family])
    assert seeing.committed_base(family) == seeing.ASSETS / family


def test_the_seeing_spec_loads_the_committed_base_and_generates():
    bb = models.resolve_backbone("tiny:qwen2_5_vl:seeing")
    assert bb.family == "qwen2_5_vl" and bb.path == str(seeing.ASSETS / "qwen2_5_vl")
    s = seeing.scene("test-seeing", 0, 0)
    out = models.generate(bb.model, bb.processor, [dict(image=world.render(s, 84), image_key="a", prompt="What color is the circle?")],
                          max_new_tokens=8)
    assert len(out) == 1 and out[0].strip()


TINY = seeing.SeeingConfig(vision_steps=2, instruct_steps=2, vision_batch_size=4, instruct_batch_size=4,
                           probe_scenes=8, probe_questions=8, log_every=1)


def test_a_short_build_saves_reloads_and_is_keyed_by_its_config(tmp_path):
    out = seeing.build_seeing(TINY, tmp_path)
    meta = json.loads((out / "base_build.json").read_text())
    assert meta["config"] == dataclasses.asdict(TINY) and [h["step"] for h in meta["vision_log"]] == [1, 2]
    assert set(meta["instruct_probe"]) >= {"all"} and 0 <= meta["instruct_probe"]["all"] <= 1
    bb = models.load_backbone(out)
    assert bb.model.config.model_type == "qwen2_5_vl"
    assert seeing.build_seeing(TINY, tmp_path) == out                          # cached
    other = dataclasses.replace(TINY, word_weight=0.0)
    assert seeing.seeing_dir(other, tmp_path) != out
    assert seeing.seeing_dir(dataclasses.replace(TINY, run_name="x", probe_scenes=4), tmp_path) == out


class _Lines(logging.Handler):
    def __init__(self): super().__init__(); self.lines = []
    def emit(self, record): self.lines.append(record.getMessage())


def test_a_stale_committed_base_is_not_used(tmp_path, monkeypatch):
    "When SEEING[family] differs from the committed record, the spec builds that config into the cache (and says so)."
    monkeypatch.setitem(seeing.SEEING, "qwen2_5_vl", TINY)
    h = _Lines(); seeing.log.addHandler(h)
    try:
        assert seeing.committed_base("qwen2_5_vl") is None
        bb = seeing.seeing_backbone("qwen2_5_vl", cache_dir=tmp_path)
    finally: seeing.log.removeHandler(h)
    assert bb.path == str(seeing.seeing_dir(TINY, tmp_path))
    text = "\n".join(h.lines)
    assert "another config" in text and "building the seeing base" in text


def test_bad_settings_are_refused():
    from mllm_nle.core import ConfigError
    with pytest.raises(ConfigError, match="multiple of 28"): seeing.SeeingConfig(image_size=90)
    with pytest.raises(ConfigError, match="vision_stepz"): seeing.load_seeing_config(None, vision_stepz=3)
    with pytest.raises(ValueError, match="seeing bases exist"): seeing.seeing_backbone("qwen2_vl")
