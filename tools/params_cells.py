"""Rewrite each experiment notebook's `parameters` cell so it names every field of its config (papermill then
passes every valid key of a `-f` params file without "Passed unknown parameter" warnings).

    python tools/params_cells.py           # rewrite the cells
    python tools/params_cells.py --check   # exit 1, naming the notebooks, when a cell is out of date

Values that a cell sets to something other than None (e.g. `run_name = "study"`) are kept."""
import ast, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def configs() -> dict:
    "notebook -> its config class."
    from mllm_nle import seeing
    from mllm_nle.recipes import dgpref, hacl, mcle, mcmdpo
    return {"mcle_train": mcle.MCLEConfig, "mcle_study": mcle.MCLEConfig, "dgpref_data": dgpref.DGPrefConfig,
            "dgpref_train": dgpref.DGPrefConfig, "hacl_train": hacl.HACLConfig, "mcmdpo_train": mcmdpo.MCMDPOConfig,
            "mcmdpo_study": mcmdpo.MCMDPOConfig, "seeing_report": seeing.SeeingReportConfig}

def current_values(src: str) -> dict:
    "The non-None literal values a parameters cell assigns."
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try: v = ast.literal_eval(node.value)
            except ValueError: continue
            if v is not None: out[node.targets[0].id] = v
    return out

def main(check: bool = False) -> int:
    from mllm_nle.experiment import parameters_cell
    stale = []
    for name, cls in configs().items():
        path = ROOT/"nbs"/f"{name}.ipynb"
        nb = json.loads(path.read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        old = "".join(cell["source"])
        new = parameters_cell(cls, {k: v for k, v in current_values(old).items() if k != "params_file"})
        if old == new: continue
        stale.append(name)
        if not check:
            cell["source"] = new.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    if stale: print(("out of date: " if check else "rewrote: ") + ", ".join(stale))
    return 1 if check and stale else 0

if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
