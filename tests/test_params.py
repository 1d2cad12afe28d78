"Every params file loads through its recipe's config class (unknown keys are errors), and so does a typo."
from pathlib import Path

import pytest
import yaml

from mllm_nle.core import ConfigError, load_config
from mllm_nle import gym, seeing
from mllm_nle.recipes import dgpref, hacl, mcle, mcmdpo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"mcle": mcle.MCLEConfig, "dgpref": dgpref.DGPrefConfig, "hacl": hacl.HACLConfig, "mcmdpo": mcmdpo.MCMDPOConfig,
           "seeing": seeing.SeeingConfig}
PARAMS = sorted((ROOT/"params").rglob("*.yaml"))


def config_class(path: Path):
    "A params file belongs to the recipe its name starts with (`params/mcle_demo.yaml` -> MCLEConfig); `params/gym/*` to the gym."
    if path.parent.name == "gym": return gym.GymConfig
    prefix = path.stem.split("_")[0]
    if prefix not in CONFIGS: pytest.fail(f"{path}: no recipe for prefix {prefix!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[prefix]


def test_there_are_params_files():
    assert any(p.name == "mcle_demo.yaml" for p in PARAMS)


@pytest.mark.parametrize("path", PARAMS, ids=[p.relative_to(ROOT/"params").as_posix() for p in PARAMS])
def test_params_file_loads_through_its_recipe_config(path):
    cfg = load_config(config_class(path), path)
    assert cfg.run_name


def test_a_typo_in_a_params_file_names_the_key(tmp_path):
    p = tmp_path/"mcle_typo.yaml"
    p.write_text(yaml.safe_dump({"run_name": "x", "stepz": 3}))
    with pytest.raises(ConfigError, match="stepz"):
        load_config(mcle.MCLEConfig, p)


def test_a_typo_in_loss_kwargs_names_the_key():
    cfg = mcle.MCLEConfig(loss_kwargs={"lamdas": {"semantic": 1.0}})
    with pytest.raises(ConfigError, match="lamdas"):
        mcle.mcle_arms(cfg, mcle.MCLEData(train=[dict(id="a", group="g", weight=1.0)], test=[], scenes=None, source="", reports={}))


@pytest.mark.parametrize("cls", [mcle.MCLEConfig, dgpref.DGPrefConfig, hacl.HACLConfig, mcmdpo.MCMDPOConfig, gym.GymConfig],
                         ids=lambda c: c.__name__)
def test_every_setting_has_help_text(cls):
    "Each field's help is the comment on its line (its own class's, or a base class's): `mllm-nle settings` prints it."
    from dataclasses import fields
    from mllm_nle.experiment import config_help
    helps = config_help(cls)
    missing = [f.name for f in fields(cls) if not helps.get(f.name)]
    assert not missing, f"{cls.__name__}: no help text for {missing}"
