"""bench/gpu_suite.sh --dry-run: the prepared GPU check runs on the CPU with the small real-shaped sizes, so it cannot rot
before a GPU is lent. Needs the real tokenizers (../shared/data/tokenizers); skips, naming them, without."""
import json, subprocess
from pathlib import Path

import pytest

from mllm_nle import realshape

ROOT = Path(__file__).resolve().parents[1]
TOK = realshape.tokenizers_dir()


@pytest.mark.skipif(not (TOK/"qwen2_5"/"tokenizer.json").exists(), reason=f"the real tokenizers are not in {TOK}")
def test_gpu_suite_dry_run(tmp_path):
    out = tmp_path/"gpu_suite.json"
    p = subprocess.run(["bash", str(ROOT/"bench"/"gpu_suite.sh"), "--dry-run", "--out", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"].startswith("dry-run") and set(res["builds"]) == {"qwen2_5_vl", "llava"}
    assert set(res["recipes"]) == {"mcle", "dgpref", "hacl_llava", "hacl_qwen", "mcmdpo"}
    for name, r in res["recipes"].items():
        for style in ("ours", "release"):
            assert r[style]["step_s"] > 0, (name, style, r[style])
        assert r["rows"] >= 2 and r["tokens_per_row"] > r["image_tokens"] > 0
    assert res["recipes"]["mcmdpo"]["rows"] == 8 and res["recipes"]["dgpref"]["image_tokens"] == 576
    assert res["launches"]["ddp"]["ok"], res["launches"]["ddp"]
    assert all("skipped" in res["launches"][c] for c in ("deepspeed_zero2", "deepspeed_zero3", "fsdp"))
