# Two commands on a fresh clone: `make demo` runs the main job, `make test` runs the tests.
# Each creates or reuses the virtual env (MLLM_NLE_VENV, default ~/.cache/mllm_nle/venv).
.PHONY: demo test env export clean-nbs
demo: ; bash scripts/demo.sh
test: ; bash scripts/test.sh
env: ; bash scripts/env.sh
export: ; bash -c 'export PATH=$$(bash scripts/env.sh | tail -1)/bin:$$PATH; nbdev_export && nbdev_clean'
