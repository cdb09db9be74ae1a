from pathlib import Path

import pytest

from dwfc.config import Recipe, builtin_recipes, load_recipe, recipe_to_yaml
from dwfc.errors import InputError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_default_recipe_file_equals_the_built_in_defaults():
    assert load_recipe("default") == Recipe()


def test_every_shipped_recipe_validates_and_starts_with_its_command():
    names = builtin_recipes()
    assert {"default", "demo"} <= set(names)
    for name in names:
        load_recipe(name)
        first_line = (RECIPES / f"{name}.yaml").read_text().splitlines()[0]
        assert first_line.startswith("#")


def test_overrides_convert_to_the_field_type():
    recipe = load_recipe("default", ["train.epochs=7", "sparsity.target=0.98", "train.lr=1e-3"])
    assert recipe.train.epochs == 7
    assert recipe.sparsity.target == 0.98
    assert recipe.train.lr == 1e-3


def test_override_splits_on_the_first_equals_sign():
    recipe = load_recipe("default", ["data.source=pkg.mod:make"])
    assert recipe.data.source == "pkg.mod:make"
    recipe = load_recipe("default", ["model.arch_kwargs.name=a=b"])
    assert recipe.model.arch_kwargs == {"name": "a=b"}


def test_dict_fields_accept_new_keys():
    recipe = load_recipe("default", ["model.arch_kwargs.num_classes=10"])
    assert recipe.model.arch_kwargs == {"num_classes": 10}


def test_unknown_key_suggests_the_closest():
    with pytest.raises(InputError, match="did you mean 'epochs'"):
        load_recipe("default", ["train.epoch=3"])


def test_unknown_section_is_listed():
    with pytest.raises(InputError, match="unknown recipe key 'trian'.*did you mean 'train'"):
        load_recipe("default", ["trian.epochs=3"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(InputError, match=r"train\.epochs.*'abc'"):
        load_recipe("default", ["train.epochs=abc"])


@pytest.mark.parametrize("value", ["0", "1", "-0.5", "1.5", "nan"])
def test_target_sparsity_outside_the_open_unit_interval_is_rejected(value):
    with pytest.raises(InputError, match="sparsity.target"):
        load_recipe("default", [f"sparsity.target={value}"])


@pytest.mark.parametrize("value", ["1", "0"])
def test_depth_below_two_is_rejected(value):
    with pytest.raises(InputError, match="factorize.depth"):
        load_recipe("default", [f"factorize.depth={value}"])


def test_override_without_equals_is_rejected():
    with pytest.raises(InputError, match="section.key=value"):
        load_recipe("default", ["train.epochs"])


def test_unknown_recipe_name_lists_the_built_in_ones():
    with pytest.raises(InputError, match="default"):
        load_recipe("nosuch")


def test_unknown_key_in_a_yaml_file_is_rejected(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(InputError, match="did you mean 'epochs'"):
        load_recipe(path)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_recipe(path)


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe("demo", ["train.epochs=3", "model.arch_kwargs.num_classes=10"])
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(path) == recipe
