"""What every benchmark script does with its result: print it as JSON and, with `--out`, write the same text there."""
import json
from pathlib import Path


def emit(result: dict, out: str | None = None, indent: int | None = None) -> dict:
    "Print `result` as JSON (one line, or indented) and write it to `out` when given; return it."
    text = json.dumps(result, indent=indent)
    print(text)
    if out: Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(text + ("\n" if indent is None else ""))
    return result
