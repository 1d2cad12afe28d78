"The foundation: the drift check catches hand edits, every params file parses, and the lower layers import only downwards."
import ast, os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]

def _git(d, *a): subprocess.run(["git", *a], cwd=d, check=True, capture_output=True)

@pytest.fixture
def repo_copy(tmp_path):
    "A committed copy of the library and its notebooks in a fresh git repo."
    d = tmp_path/"repo"; d.mkdir()
    for name in ["settings.ini", "setup.py", "nbs", "mllm_nle", "scripts"]:
        src = ROOT/name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d/name)
    shutil.rmtree(d/"nbs"/".ipynb_checkpoints", ignore_errors=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    _git(d, "init", "-q"); _git(d, "add", "-A")
    _git(d, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    # Start from an exported state, so the copy itself has no drift.
    subprocess.run(["nbdev_export"], cwd=d, env=env, check=True, capture_output=True)
    _git(d, "add", "-A"); _git(d, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "y", "--allow-empty")
    return d, env

def _drift(d, env): return subprocess.run(["bash", "scripts/check_drift.sh", "."], cwd=d, env=env, capture_output=True, text=True)

def test_drift_check_passes_when_in_step(repo_copy):
    d, env = repo_copy
    r = _drift(d, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout

def test_drift_check_fails_on_hand_edit(repo_copy):
    d, env = repo_copy
    core = d/"mllm_nle"/"core.py"
    core.write_text(core.read_text() + "\nHAND_EDIT = 1\n")
    r = _drift(d, env)
    assert r.returncode == 1
    assert "disagrees with the notebooks" in r.stdout and "core.py" in r.stdout

def test_drift_check_fails_on_unexported_notebook_edit(repo_copy):
    d, env = repo_copy
    nb = d/"nbs"/"00_core.ipynb"
    nb.write_text(nb.read_text().replace("def seed_everything(", "def seed_everything_renamed("))
    r = _drift(d, env)
    assert r.returncode == 1 and "core.py" in r.stdout

@pytest.mark.parametrize("path", sorted((ROOT/"params").glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_are_mappings(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


# The bottom of the layer order: core -> grammar -> world -> world_data -> models -> data -> metrics ...
LOWER_LAYERS = ["core", "grammar", "world", "world_data"]

def _package_imports(module: str) -> set[str]:
    "Modules of the package that `mllm_nle/<module>.py` imports anywhere (top level or inside functions)."
    tree, out = ast.parse((ROOT/"mllm_nle"/f"{module}.py").read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif (node.module or "").startswith("mllm_nle"):
                out |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mllm_nle.")}
    return out

@pytest.mark.parametrize("module", LOWER_LAYERS)
def test_lower_layers_import_only_downwards(module):
    below = set(LOWER_LAYERS[:LOWER_LAYERS.index(module)])
    assert _package_imports(module) <= below, f"{module} imports {sorted(_package_imports(module) - below)}, above it"
