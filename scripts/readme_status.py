"""The README's gym status, generated from a committed run's `metrics.json`, so a number there cannot drift from its run.

    python scripts/readme_status.py            # rewrite every generated block of README.md
    python scripts/readme_status.py --check    # exit 1 when a block differs from its run (tests/test_readme.py runs this)

A block sits between `<!-- status:gym RUN -->` and `<!-- /status:gym -->`, RUN a folder under outputs/ holding the
executed report's metrics.json. Everything between the markers is rewritten; text outside them is the README's own.
"""
import json, re, sys
from pathlib import Path

from mllm_nle.experiment import markdown_table as _table
from mllm_nle.gym import METRICS
from mllm_nle.gym_verdicts import ci_text

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- status:gym (?P<run>\S+) -->\n)(?P<body>.*?)(<!-- /status:gym -->)", re.S)


def _label(k: str) -> str:
    return METRICS[k]["label"] if k in METRICS else k


def gym_block(run: str) -> str:
    "The markdown of one gym run's status: its size and cost, each method's verdicts, the columns' gates, MDEs, tuned values."
    m = json.loads((ROOT/run/"metrics.json").read_text())
    env, st = m["environment"], m["status"]
    f = lambda v: "n/a" if v is None else f"{v:+.3f}"
    head = (f"From [`{run}/gym_report.ipynb`]({run}/gym_report.ipynb): {len(m['bases'])} bases × {len(m['seeds'])} seeds, "
            f"{len(m['rows'])} rows, backbone `{m['backbone']}` (python {env['python']}, torch {env['torch']}, "
            f"transformers {env['transformers']}, peft {env['peft']}, {env['cpus']} CPUs).")
    verdicts = _table(["row", "column", "Δ vs its SFT row [95% CI]", "verdict"],
                      [[v["row"], _label(v["column"]), ci_text(v), v["verdict"]] for v in m["verdicts"]])
    gates = _table(["column", "verdicts allowed", "working positive controls", "A/A Δ", "why not"],
                   [[_label(k), "yes" if s["usable"] else "no", ", ".join(s["working"]) or "none", f(s["aa"]), s["why"] or "—"]
                    for k, s in st.items() if s["controls"] or s["why"] != "no positive control was run"])
    mde = _table(["column", "bases × seeds × items", "MDE (80% power)", "SFT level", "relative"],
                 [[_label(k), f"{d['bases']} × {d['seeds']} × {d['items']}", f"{d['mde']:.3f}",
                   "n/a" if d["level"] is None else f"{d['level']:.3f}", "n/a" if d["relative"] is None else f"{100 * d['relative']:.0f}%"]
                  for k, d in m["mde"].items()])
    tuned = _table(["row", "lr", "weight", "validation score"],
                   [[r, f"{t['lr']:.2g}", f"{t['weight'][0]} = {t['weight'][1]:g}" if t["weight"] else "default",
                     "n/a" if t["score"] is None else f"{t['metric']} {t['score']:.3f}"] for r, t in (m.get("tuned") or {}).items()])
    return "\n\n".join([head, "Verdicts (each method row against its own SFT row, on its method's home columns):", verdicts,
                        "Which columns may give a verdict (a positive control beats its SFT row, the A/A row does not move):", gates,
                        "What each column can detect:", mde, "The settings each row chose on the validation split:", tuned]) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda mt: mt[1] + gym_block(mt["run"]) + mt[4], text)


def main(argv) -> int:
    readme = ROOT/"README.md"
    text = readme.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("README.md: a generated status block differs from its run; run python scripts/readme_status.py", file=sys.stderr)
            return 1
        print(f"README.md: {len(BLOCK.findall(text))} generated block(s) match their runs"); return 0
    readme.write_text(new, encoding="utf-8")
    print(f"README.md: {len(BLOCK.findall(text))} block(s) written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
