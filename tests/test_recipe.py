"""Recipe loading: composition, overrides, the lock file and one-line errors naming file and key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgevit.errors import BadInput
from edgevit.recipe import Recipe, build_recipe, load_recipe, recipe_schema, recipe_to_yaml, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_recipe_composes_referenced_files():
    r = load_recipe(ROOT / "recipes" / "fp32_export.yaml")
    assert r.name == "fp32_export"
    assert r.model.source == "builtin:hybrid-cifar10"
    assert r.calibration.num == 256 and r.calibration.path == (ROOT / "calibration" / "builtin-calib").resolve()
    assert [e.precision for e in r.export] == ["fp32"]
    assert r.validation.eval.path == (ROOT / "calibration" / "builtin-eval").resolve()
    assert r.validation.devices[0].name == "local-ort-cpu"


def test_shipped_recipe_by_name_and_listing():
    assert load_recipe("fp32_export").name == "fp32_export"
    names = [n for n, _, _ in shipped_recipes()]
    assert "fp32_export" in names


def test_overrides_parse_yaml_values_and_index_lists():
    r = load_recipe(ROOT / "recipes" / "fp32_export.yaml",
                    ["validate.devices.0.threads=1", "model.mean=[0.5, 0.5, 0.5]", "seed=7"])
    assert r.validation.devices[0].threads == 1
    assert r.model.mean == [0.5, 0.5, 0.5]
    assert r.seed == 7


def test_description_says_which_model_it_was_written_for_when_the_model_is_overridden(tmp_path):
    """A shipped recipe's description names its own model; a run on another model keeps the text and says so
    (once: replaying the run's lock file adds nothing), and an override that keeps the model leaves it alone."""
    plain = load_recipe("int8_ptq").description
    other = load_recipe("int8_ptq", ["model.source=timm:fastvit_t8"]).description
    assert other.startswith(plain.strip()) and other != plain
    assert "Written for `builtin:hybrid-cifar10`" in other and "`timm:fastvit_t8`" in other
    assert load_recipe("int8_ptq", ["model.source=builtin:hybrid-cifar10"]).description == plain
    assert load_recipe("int8_ptq", ["model.input_size=32"]).description == plain
    assert load_recipe("int8_ptq", ["model=builtin:vit-cifar10"]).description != plain
    r = load_recipe("int8_ptq", ["model.source=timm:fastvit_t8"])
    assert load_recipe(write(tmp_path / "recipe.lock.yaml", recipe_to_yaml(r))) == r


def test_lock_file_round_trips(tmp_path):
    r = load_recipe(ROOT / "recipes" / "fp32_export.yaml", ["validate.devices.0.iters=3"])
    lock = write(tmp_path / "recipe.lock.yaml", recipe_to_yaml(r))
    again = load_recipe(lock)
    assert again == r


def test_base_composition(tmp_path):
    write(tmp_path / "parent.yaml", "name: parent\nseed: 3\nexport: [{precision: fp16}]\n")
    child = write(tmp_path / "child.yaml", "base: parent.yaml\nname: child\n")
    r = load_recipe(child)
    assert (r.name, r.seed, r.export[0].precision) == ("child", 3, "fp16")


def test_base_found_in_the_working_directory_then_the_shipped_recipes(tmp_path, monkeypatch):
    """A relative base: is looked up next to the recipe (and one folder up), then in the working directory, then
    in the installed package's files (recipes/...); one found nowhere names every place looked in."""
    (tmp_path / "recipes" / "mine").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    write(tmp_path / "work" / "parent.yaml", "name: parent\nseed: 7\n")
    child = write(tmp_path / "recipes" / "mine" / "child.yaml", "base: parent.yaml\nname: child\n")
    monkeypatch.chdir(tmp_path / "work")
    assert load_recipe(child).seed == 7
    shipped = write(tmp_path / "recipes" / "mine" / "on_shipped.yaml", "base: recipes/int8_ptq.yaml\nname: mine\n")
    assert load_recipe(shipped).quantize is not None  # the installed package's int8_ptq recipe
    lost = write(tmp_path / "recipes" / "mine" / "lost.yaml", "base: nowhere.yaml\nname: lost\n")
    with pytest.raises(BadInput, match=r"lost.yaml: base: path does not exist: nowhere.yaml \(looked in: .*work/nowhere"):
        load_recipe(lost)


def test_unknown_key_names_file_key_and_allowed(tmp_path):
    p = write(tmp_path / "bad.yaml", "name: x\nmodel: {source: builtin:hybrid-cifar10, chekpoint: a.pt}\n")
    with pytest.raises(BadInput) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "model.chekpoint" in msg and "unknown key" in msg
    assert "checkpoint" in msg.split("allowed:")[1]


def test_unknown_key_in_referenced_file_names_that_file(tmp_path):
    dev = write(tmp_path / "dev.yaml", "name: d\nthreds: 2\n")
    p = write(tmp_path / "r.yaml", f"name: x\nvalidate: {{devices: [{dev}]}}\n")
    with pytest.raises(BadInput) as e:
        load_recipe(p)
    assert str(dev) in str(e.value) and "threds" in str(e.value)


def test_wrong_type_is_one_line(tmp_path):
    p = write(tmp_path / "bad.yaml", "name: x\nvalidate: {devices: [{threads: many}]}\n")
    with pytest.raises(BadInput) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "validate.devices.0.threads" in msg and "integer" in msg and "\n" not in msg


def test_malformed_yaml_gives_line(tmp_path):
    p = write(tmp_path / "bad.yaml", "name: x\nmodel: [unclosed\n")
    with pytest.raises(BadInput) as e:
        load_recipe(p)
    assert "malformed YAML" in str(e.value) and "line" in str(e.value)


def test_missing_path_lists_where_it_looked(tmp_path):
    p = write(tmp_path / "r.yaml", "name: x\ncalibration: {path: no/such/dir}\n")
    with pytest.raises(BadInput) as e:
        load_recipe(p)
    assert "calibration.path" in str(e.value) and "does not exist" in str(e.value)


def test_bad_model_prefix(tmp_path):
    with pytest.raises(BadInput) as e:
        build_recipe({"name": "x", "model": "hub:foo"})
    assert "builtin:" in str(e.value)


def test_bad_override_syntax():
    with pytest.raises(BadInput):
        load_recipe(ROOT / "recipes" / "fp32_export.yaml", ["seed"])
    with pytest.raises(BadInput) as e:
        load_recipe(ROOT / "recipes" / "fp32_export.yaml", ["validate.devices.5.threads=1"])
    assert "index" in str(e.value)
    # an entry of a list the recipe leaves out (coreml_mobile times nothing): one line saying so, not a schema error
    # about a key '0'
    with pytest.raises(BadInput) as e:
        load_recipe("coreml_mobile", ["validate.devices.0.iters=5"])
    assert str(e.value) == ("--set validate.devices.0.iters=5: the recipe has no validate.devices list, so no entry 0 "
                            "to change; give the whole list instead, e.g. --set 'validate.devices=[...]'")
    assert load_recipe("coreml_mobile", ["validate.devices=[devices/local-ort-cpu.yaml]"]).validation.devices


def test_schema_lists_sections():
    s = recipe_schema()
    assert {"name", "model", "calibration", "export", "validate"} <= set(s["properties"])
    assert "name" in s["required"]


def test_every_shipped_yaml_is_valid():
    for folder in ("recipes",):
        for p in (ROOT / folder).glob("*.yaml"):
            assert isinstance(load_recipe(p), Recipe)
    for p in (ROOT / "calibration").glob("*.yaml"):
        assert "path" in yaml.safe_load(p.read_text())


def test_mean_on_0_255_scale_is_caught():
    with pytest.raises(BadInput) as e:
        build_recipe({"name": "x", "model": {"mean": [123.7, 116.3, 103.5]}})
    assert "model.mean" in str(e.value) and "255" in str(e.value)
