"""The README's generated status blocks match the committed runs they name (`scripts/readme_status.py`)."""
import importlib.util, json, shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_status", ROOT/"scripts"/"readme_status.py")
rs = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(rs)


def test_readme_blocks_match_their_runs():
    text = (ROOT/"README.md").read_text(encoding="utf-8")
    runs = [m["run"] for m in rs.BLOCK.finditer(text)]
    assert runs, "README.md has no generated status block"
    for run in runs: assert (ROOT/run/"metrics.json").exists(), f"README.md names {run}, which has no metrics.json"
    assert rs.render(text) == text, "README.md: a status block differs from its run; run python scripts/readme_status.py"


def test_a_changed_number_in_the_run_changes_the_block(tmp_path, monkeypatch):
    "The block is read from the run: a Δ edited in metrics.json shows up in the rendering."
    text = (ROOT/"README.md").read_text(encoding="utf-8")
    run = next(rs.BLOCK.finditer(text))["run"]
    (tmp_path/run).mkdir(parents=True)
    m = json.loads((ROOT/run/"metrics.json").read_text())
    m["verdicts"][0]["delta"] = 123.456
    (tmp_path/run/"metrics.json").write_text(json.dumps(m))
    monkeypatch.setattr(rs, "ROOT", tmp_path)
    new = rs.render(text)
    assert new != text and "+123.456" in new and "+123.456" not in text
