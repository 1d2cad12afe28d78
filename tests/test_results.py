"""Committed result runs: packed per-item files (`scripts/pack_results.py`) that unpack byte for byte."""
import gzip, importlib.util, json, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pack_results", ROOT/"scripts"/"pack_results.py")
pr = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(pr)


def _run(tmp: Path) -> Path:
    run = tmp/"outputs"/"x"/"results"/"r"
    for rel, text in {"x.ipynb": "{}", "metrics.json": "{\"a\": 1}", "figures/f.png": "png", "config.yaml": "a: 1\n",
                      "m/seed0/generations.jsonl": "{\"id\": 1, \"output\": \"Ünïcode\"}\n", "m/seed0/done.json": "{}",
                      "pipeline/pairs.jsonl": "", "deep/er/train_log.json": "[1, 2]"}.items():
        (run/rel).parent.mkdir(parents=True, exist_ok=True); (run/rel).write_text(text, encoding="utf-8")
    return run


def test_pack_keeps_the_evidence_and_unpacks_byte_for_byte(tmp_path):
    run = _run(tmp_path)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert pr.runs(tmp_path/"outputs") == [run]
    assert pr.pack(run) == (4, 6)
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert left == ["config.yaml", "figures/f.png", "items.jsonl.gz", "items_manifest.json", "metrics.json", "x.ipynb"]
    assert not (run/"m").exists() and not (run/"deep").exists()
    assert set(json.loads((run/"items_manifest.json").read_text())) == {"m/seed0/generations.jsonl", "m/seed0/done.json",
                                                                        "pipeline/pairs.jsonl", "deep/er/train_log.json"}
    assert pr.unpack(run) == 4
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not k.startswith("items")} == before


def test_unpack_refuses_a_file_that_does_not_match_its_sha256(tmp_path):
    run = _run(tmp_path); pr.pack(run)
    lines = gzip.open(run/"items.jsonl.gz", "rt", encoding="utf-8").read().splitlines()
    r = json.loads(lines[0]); r["text"] += "tampered"
    with gzip.open(run/"items.jsonl.gz", "wt", encoding="utf-8") as f: f.write("\n".join([json.dumps(r), *lines[1:]]) + "\n")
    with pytest.raises(SystemExit, match="does not match its sha256"): pr.unpack(run)


def test_every_committed_run_is_packed():
    "No committed result run holds loose per-item files: each is a file the packer keeps, or outside any run."
    tracked = subprocess.run(["git", "ls-files", "outputs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "git ls-files outputs listed nothing"
    found = pr.runs(ROOT/"outputs")
    loose = [f for f in tracked for r in found if (ROOT/f).is_relative_to(r) and not pr.kept(r, ROOT/f)]
    assert not loose, f"{len(loose)} loose per-item file(s), e.g. {loose[:3]}: run python scripts/pack_results.py on their run"


def test_pack_refuses_a_binary_file_and_leaves_the_run_as_it_was(tmp_path):
    run = _run(tmp_path)
    (run/"m"/"seed0"/"adapter_model.safetensors").write_bytes(b"\x80\x81 not text")
    before = sorted(p for p in run.rglob("*") if p.is_file())
    with pytest.raises(SystemExit, match="not a text file"): pr.pack(run)
    assert sorted(p for p in run.rglob("*") if p.is_file()) == before
