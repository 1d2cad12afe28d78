"""Pack a committed result run's per-item and intermediate files into one `items.jsonl.gz`, losslessly.

    python scripts/pack_results.py outputs/gym/results/cpu ...     # pack (the packed files are removed)
    python scripts/pack_results.py --unpack outputs/gym/results/cpu # restore them, byte for byte
    python scripts/pack_results.py --count outputs                  # how many files each run would keep

What stays as files: the executed notebooks, figures, `config.yaml`, and the JSON files at the run's top level
(metrics, study, paired). Everything else (generations, per-seed logs, pipeline intermediates) goes into
`items.jsonl.gz`: one line per file, `{"file": path in the run, "sha256": ..., "text": its content}`, and
`items_manifest.json` lists each file's sha256 and size, so a reader can check what it unpacks.
"""
import gzip, hashlib, json, sys
from pathlib import Path

ARCHIVE, MANIFEST = "items.jsonl.gz", "items_manifest.json"


def kept(run: Path, f: Path) -> bool:
    "Whether `f` stays a file of its own in `run`."
    rel = f.relative_to(run)
    if f.name in (ARCHIVE, MANIFEST) or f.suffix in (".ipynb", ".png", ".md") or f.name == "config.yaml": return True
    return len(rel.parts) == 1 and f.suffix == ".json"


def runs(root: Path) -> list[Path]:
    "Every result run under `root`: a folder holding an executed notebook or a metrics.json, below some `results/`."
    found = {p.parent for p in root.rglob("*") if p.is_file() and (p.suffix == ".ipynb" or p.name == "metrics.json") and "results" in p.parts}
    return sorted(r for r in found if not any(o != r and o in r.parents for o in found))


def pack(run: Path) -> tuple[int, int]:
    "Pack `run`; (files packed, files kept)."
    files = sorted(p for p in run.rglob("*") if p.is_file())
    todo = [f for f in files if not kept(run, f)]
    if not todo: return 0, len(files)
    if (run/ARCHIVE).exists(): raise SystemExit(f"{run/ARCHIVE}: already packed; unpack it first")
    manifest = {}
    with gzip.open(run/ARCHIVE, "wt", encoding="utf-8", compresslevel=9) as out:
        for f in todo:
            data = f.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            try: text = data.decode("utf-8")
            except UnicodeDecodeError:
                (run/ARCHIVE).unlink(); raise SystemExit(f"{f}: not a text file (adapters and checkpoints are not committed); nothing was packed")
            out.write(json.dumps(dict(file=str(f.relative_to(run)), sha256=sha, text=text)) + "\n")
            manifest[str(f.relative_to(run))] = dict(sha256=sha, bytes=len(data))
    (run/MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for f in todo: f.unlink()
    for d in sorted({p for f in todo for p in f.relative_to(run).parents if str(p) != "."}, key=lambda p: -len(p.parts)):
        if (run/d).exists() and not any((run/d).iterdir()): (run/d).rmdir()
    return len(todo), len(files) - len(todo) + 2


def unpack(run: Path) -> int:
    "Restore the packed files of `run`, checking each against its sha256."
    n = 0
    with gzip.open(run/ARCHIVE, "rt", encoding="utf-8") as src:
        for line in src:
            r = json.loads(line); data = r["text"].encode("utf-8")
            if hashlib.sha256(data).hexdigest() != r["sha256"]: raise SystemExit(f"{run/ARCHIVE}: {r['file']} does not match its sha256")
            p = run/r["file"]; p.parent.mkdir(parents=True, exist_ok=True); p.write_bytes(data); n += 1
    return n


def main(argv) -> int:
    paths = [Path(a) for a in argv if not a.startswith("--")]
    if "--count" in argv:
        total = 0
        for root in paths:
            for r in runs(root):
                files = [p for p in r.rglob("*") if p.is_file()]
                k = sum(kept(r, f) for f in files) + (2 if any(not kept(r, f) for f in files) else 0)
                total += k; print(f"{r}: {len(files)} files -> {k}")
        print(f"total kept: {total}"); return 0
    for r in paths:
        if "--unpack" in argv: print(f"{r}: {unpack(r)} files restored")
        else: print("{}: {} packed, {} kept".format(r, *pack(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
