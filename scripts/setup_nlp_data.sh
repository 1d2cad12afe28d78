#!/usr/bin/env bash
# Install the offline NLP stand-ins that `mllm_nle.amber` uses when the real NLTK data and spaCy
# `en_core_web_lg` are absent (see nbs/04a_amber.ipynb). Idempotent: a second run only checks.
#
#   MLLM_NLE_NLTK_DATA  target folder, NLTK layout (default ~/.cache/mllm_nle/nltk_data)
#   PYTHON              python with pip (default: the project venv, else python3)
#
# What it installs, all from the ordinary registries and checked by hash:
#   corpora/wordnet/    WordNet 3.0 from Debian's `wordnet-base` + `wordnet-sense-index` (1:3.0-37),
#                       plus the `lexnames` file NLTK's reader needs, rebuilt from the
#                       lexnames(5WN) man page that `wordnet-base` ships.
#   taggers/aptagger-0.2.0/  the WSJ averaged-perceptron weights of PyPI `textblob-aptagger==0.2.0`,
#                       converted to JSON by a whitelisting pickle-opcode reader (never pickle.load).
# It never installs third-party re-uploads of spaCy models or NLTK data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${MLLM_NLE_NLTK_DATA:-$HOME/.cache/mllm_nle/nltk_data}
venv_py=${MLLM_NLE_VENV:-$HOME/.cache/mllm_nle/venv}/bin/python
py=${PYTHON:-$([ -x "$venv_py" ] && echo "$venv_py" || echo python3)}
WN_VERSION="1:3.0-37"
WN_BASE_SHA=61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752
WN_SENSE_SHA=b22c7d3100470d90f812acc224718e4bd362d7ca427766fa3e11013c8c7895cf
APT_WHL_SHA=1ed281f37b3646475503ce77347d0ed92a5f4de176a63c6ab4d1064636067dcc
wn_dir=$dest/corpora/wordnet
tag_dir=$dest/taggers/aptagger-0.2.0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"

check_sha() { echo "$2  $1" | sha256sum -c --quiet - || { echo "[nlp] hash mismatch: $1" >&2; exit 1; }; }

# --- WordNet 3.0 (Debian) --------------------------------------------------------------------
if [ -f "$wn_dir/.done" ]; then
  echo "[nlp] wordnet: present in $wn_dir"
else
  echo "[nlp] wordnet: fetching Debian wordnet-base/wordnet-sense-index $WN_VERSION"
  mkdir -p "$tmp/deb" && cd "$tmp/deb"
  if ! apt-get download "wordnet-base=$WN_VERSION" "wordnet-sense-index=$WN_VERSION" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 || true
    apt-get download "wordnet-base=$WN_VERSION" "wordnet-sense-index=$WN_VERSION" >/dev/null 2>&1 \
      || { echo "[nlp] apt-get download failed (need Debian's registry)" >&2; exit 1; }
  fi
  check_sha wordnet-base_*_all.deb "$WN_BASE_SHA"
  check_sha wordnet-sense-index_*_all.deb "$WN_SENSE_SHA"
  for f in *.deb; do dpkg-deb -x "$f" x; done
  mkdir -p "$wn_dir.tmp"
  cp x/usr/share/wordnet/* "$wn_dir.tmp/"
  # lexnames: "NN<TAB>name<TAB>category" rows, from the table in lexnames(5WN).
  zcat x/usr/share/man/man5/lexnames.5WN.gz | awk -F'\t' '
    $1 ~ /^[0-9][0-9]$/ { gsub(/ +$/, "", $2); split($2, p, ".");
      c = (p[1]=="noun") ? 1 : (p[1]=="verb") ? 2 : (p[1]=="adj") ? 3 : 4;
      printf "%s\t%s\t%d\n", $1, $2, c }' > "$wn_dir.tmp/lexnames"
  [ "$(wc -l < "$wn_dir.tmp/lexnames")" = 45 ] || { echo "[nlp] lexnames: expected 45 rows" >&2; exit 1; }
  cp x/usr/share/doc/wordnet-base/copyright "$wn_dir.tmp/LICENSE"
  rm -rf "$wn_dir"; mv "$wn_dir.tmp" "$wn_dir"; touch "$wn_dir/.done"
  echo "[nlp] wordnet: installed in $wn_dir"
fi

# --- averaged-perceptron POS tagger weights (textblob-aptagger 0.2.0, WSJ) --------------------
if [ -f "$tag_dir/.done" ]; then
  echo "[nlp] tagger: present in $tag_dir"
else
  echo "[nlp] tagger: fetching textblob-aptagger==0.2.0 (weights only, not installed)"
  echo "textblob-aptagger==0.2.0 --hash=sha256:$APT_WHL_SHA" > "$tmp/req.txt"
  "$py" -m pip download -q --no-deps --require-hashes -r "$tmp/req.txt" -d "$tmp/whl"
  mkdir -p "$tag_dir.tmp"
  "$py" - "$tmp"/whl/textblob_aptagger-0.2.0-*.whl "$tag_dir.tmp" <<'EOF'
"Convert trontagger-0.1.0.pickle to JSON by interpreting its opcodes: plain containers only."
import json, pickletools, sys, zipfile
from pathlib import Path
whl, out = sys.argv[1], Path(sys.argv[2])
data = zipfile.ZipFile(whl).read("textblob_aptagger/trontagger-0.1.0.pickle")
SET = object()  # the single allowed global: builtins.set
stack, memo, marks = [], {}, []
def pop_mark():
    i = marks.pop(); items = stack[i:]; del stack[i:]; return items
for op, arg, _ in pickletools.genops(data):
    n = op.name
    if n == "PROTO": continue
    elif n in ("BINFLOAT", "SHORT_BINSTRING", "BINUNICODE", "SHORT_BINUNICODE", "BININT", "BININT1", "BININT2"): stack.append(arg)
    elif n == "EMPTY_DICT": stack.append({})
    elif n == "EMPTY_LIST": stack.append([])
    elif n == "MARK": marks.append(len(stack))
    elif n == "SETITEMS": items = pop_mark(); stack[-1].update(zip(items[::2], items[1::2]))
    elif n == "SETITEM": v = stack.pop(); k = stack.pop(); stack[-1][k] = v
    elif n == "APPENDS": items = pop_mark(); stack[-1].extend(items)
    elif n == "APPEND": v = stack.pop(); stack[-1].append(v)
    elif n in ("BINPUT", "LONG_BINPUT"): memo[arg] = stack[-1]
    elif n in ("BINGET", "LONG_BINGET"): stack.append(memo[arg])
    elif n == "TUPLE1": stack[-1] = (stack[-1],)
    elif n == "TUPLE3": c = stack[-3:]; del stack[-3:]; stack.append(tuple(c))
    elif n == "GLOBAL":
        if arg not in ("__builtin__ set", "builtins set"): sys.exit(f"refusing pickle global {arg!r}")
        stack.append(SET)
    elif n == "REDUCE":
        args = stack.pop(); fn = stack.pop()
        if fn is not SET or len(args) != 1 or not isinstance(args[0], list): sys.exit("refusing REDUCE")
        stack.append(sorted(args[0]))
    elif n == "STOP": break
    else: sys.exit(f"refusing pickle opcode {n}")
weights, tagdict, classes = stack.pop()
assert all(isinstance(v, dict) for v in weights.values()) and isinstance(tagdict, dict)
for name, obj in (("weights", weights), ("tagdict", tagdict), ("classes", classes)):
    (out / f"{name}.json").write_text(json.dumps(obj))
(out / "SOURCE.txt").write_text("PyPI textblob-aptagger==0.2.0 (MIT, Matthew Honnibal), "
    "textblob_aptagger/trontagger-0.1.0.pickle: averaged perceptron trained on WSJ.\n")
print(f"[nlp] tagger: {len(weights)} features, {len(tagdict)} tagdict words, {len(classes)} tags")
EOF
  rm -rf "$tag_dir"; mv "$tag_dir.tmp" "$tag_dir"; touch "$tag_dir/.done"
fi

# --- smoke check: the reader opens and the lemmatizer/tagger behave ---------------------------
MLLM_NLE_NLTK_DATA="$dest" "$py" - <<'EOF'
import os, json, nltk
from pathlib import Path
from nltk.corpus.reader.wordnet import WordNetCorpusReader
d = Path(os.environ["MLLM_NLE_NLTK_DATA"])
nltk.data.path.append(str(d))  # NLTK >= 3.10 only opens data under nltk.data.path
import warnings; warnings.filterwarnings("ignore", message="The multilingual functions")
wn = WordNetCorpusReader(str(d / "corpora/wordnet"), None)
assert min(wn._morphy("dogs", "n"), key=len) == "dog", "wordnet lemmatizer check failed"
assert len(json.loads((d / "taggers/aptagger-0.2.0/classes.json").read_text())) > 40
print(f"[nlp] ok: WordNet {wn.get_version()} and tagger weights in {d}")
EOF
