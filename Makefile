# Two commands on a fresh clone: `make demo` runs the main job, `make test` runs the tests.
# Each creates or reuses the virtual env (MLLM_NLE_VENV, default ~/.cache/mllm_nle/venv).
.PHONY: demo test env export clean-nbs mutation docs
demo: ; bash scripts/demo.sh
test: ; bash scripts/test.sh
# mutation testing of the scientific core (mutmut 3; ~30 min on 2 cores; not part of test or CI)
mutation: ; bash scripts/mutation.sh
env: ; bash scripts/env.sh
# static HTML of the notebooks (executed) and the committed result runs, into _site/ (no Quarto needed)
docs: ; bash scripts/docs.sh
export: ; bash -c 'export PATH=$$(bash scripts/env.sh | tail -1)/bin:$$PATH; nbdev_export && nbdev_clean'
