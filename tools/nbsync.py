"""Author notebooks as jupytext percent scripts, then turn them into clean notebooks.

    python tools/nbsync.py to-nb  scratch/01_world.py nbs/01_world.ipynb
    python tools/nbsync.py to-py  nbs/01_world.ipynb scratch/01_world.py

The notebook in `nbs/` is the source of truth; the percent file is a scratch view for editing
with a text editor (`scratch/` is git-ignored). Every written notebook gets the project's kernel."""
import sys, json, jupytext

KERNEL = {"display_name": "Python (mllm-nle)", "language": "python", "name": "mllm-nle"}

def to_nb(src, dst):
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata = {"kernelspec": KERNEL}
    for c in nb.cells:
        c.metadata = {k: v for k, v in c.metadata.items() if k == "tags"}
    jupytext.write(nb, dst, fmt="ipynb")

def to_py(src, dst): jupytext.write(jupytext.read(src), dst, fmt="py:percent")

if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"to-nb": to_nb, "to-py": to_py}[cmd](src, dst)
