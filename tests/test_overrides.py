"""Command-line overrides: `snakemake --config` passes nested values as text, which
selfexplain.config.coerce_config reads by the schema's types before the config is checked."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config
from snakemake.utils import update_config

from selfexplain.config import check_config, coerce_config, config_problems

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
TINY = REPO / "tests/data/tiny.yaml"

# --------------------------------------------------------------------------- coercion, by hand

FRAGMENT = {
    "type": "object",
    "properties": {
        "flag": {"type": "boolean"},
        "count": {"type": "integer"},
        "rate": {"type": "number"},
        "maybe": {"type": ["integer", "null"]},
        "path": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "choice": {"enum": ["a", "b"]},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "section": {
            "type": "object",
            "properties": {"inner": {"type": "object", "properties": {"n": {"type": "integer"}}}},
        },
        "by_name": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("flag", "false", False),
        ("flag", "True", True),
        ("count", "160", 160),
        ("count", " -3 ", -3),
        ("rate", "1e-3", 0.001),  # YAML 1.1 (and --config) leave it text
        ("rate", "2", 2),
        ("maybe", "null", None),
        ("maybe", "12", 12),
        ("path", "null", None),  # a null where null is allowed
        ("path", "160", "160"),  # text where text is allowed
        ("name", "true", "true"),
        ("choice", "a", "a"),
        ("seeds", "[0, 1, 2]", [0, 1, 2]),
        ("section", "{inner: {n: 5}}", {"inner": {"n": 5}}),
    ],
)
def test_text_is_read_as_the_schema_type(key, text, value):
    config = {key: text}
    coerce_config(config, FRAGMENT)
    assert config[key] == value and type(config[key]) is type(value)


def test_nested_values_and_list_items_are_read_in_place():
    section = {"inner": {"n": "7"}}
    seeds = ["0", "1", "2"]
    config = {"section": section, "seeds": seeds, "by_name": {"x": "0.5"}, "name": "n"}
    changed = coerce_config(config, FRAGMENT)
    assert config == {
        "section": {"inner": {"n": 7}},
        "seeds": [0, 1, 2],
        "by_name": {"x": 0.5},
        "name": "n",
    }
    assert config["section"] is section and config["seeds"] is seeds  # mutated, not replaced
    assert sorted(changed) == ["by_name.x", "section.inner.n", "seeds[0]", "seeds[1]", "seeds[2]"]


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("count", "160.5"),
        ("count", "many"),
        ("rate", "nan"),
        ("flag", "maybe"),
        ("seeds", "[0, 1"),
        ("section", "[1]"),
    ],
)
def test_unreadable_text_is_left_for_the_check(key, text):
    config = {key: text, "unknown": "1"}
    assert coerce_config(config, FRAGMENT) == []
    assert config == {key: text, "unknown": "1"}


# --------------------------------------------------------------------------- the real schema


def _base_config() -> dict:
    """What Snakemake builds from config/config.yaml and --configfile tests/data/tiny.yaml."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    update_config(config, yaml.safe_load(TINY.read_text()))
    return config


def _override(config: dict, *entries: str) -> dict:
    """config after `--config *entries`, parsed and merged as Snakemake does, then coerced."""
    config = copy.deepcopy(config)
    update_config(config, parse_config(list(entries)))
    coerce_config(config, SCHEMA)
    return config


def test_snakemake_passes_nested_values_as_text_and_refuses_dotted_keys():
    """Why coerce_config exists (Snakemake 9: YAML's base loader, key [a-zA-Z_][\\w-]*\\w)."""
    assert parse_config(['ablation={"n_per_kind": 160}']) == {"ablation": {"n_per_kind": "160"}}
    assert parse_config(["seeds=[0,1,2]", "offline=false"]) == {
        "seeds": ["0", "1", "2"],
        "offline": "false",
    }
    with pytest.raises(ValueError, match="valid identifier"):
        parse_config(["ablation.n_per_kind=160"])


def test_overrides_of_every_type_pass_the_real_schema(monkeypatch):
    monkeypatch.chdir(REPO)
    base = _base_config()
    config = _override(
        base,
        'ablation={"n_per_kind": 160, "drop_last": false, "kinds": [fact, copying]}',
        "seeds=[0,1,2]",
        "offline=false",
        "control_seeds=null",
        'train={"lr": 1e-4, "epochs": 0.5, "scaling": [4, 8], "group_by_length": true,'
        ' "per_task": {"ablation": {"lr": 2e-5, "patience": 1}}}',
        'features={"token_identity": {"scales": [0.5, 2]}, "layer": null}',
    )
    assert config_problems(config, SCHEMA) == []
    assert config["ablation"]["n_per_kind"] == 160 and config["ablation"]["drop_last"] is False
    assert config["ablation"]["kinds"] == ["fact", "copying"]
    assert config["ablation"]["test_fraction"] == base["ablation"]["test_fraction"] == 0.3  # merged
    assert config["seeds"] == [0, 1, 2] and config["offline"] is False
    assert config["control_seeds"] is None
    train = config["train"]
    assert (train["lr"], train["epochs"], train["scaling"]) == (1e-4, 0.5, [4, 8])
    assert train["group_by_length"] is True and train["n_train"] == 24  # tiny's, kept
    per_task = base["train"]["per_task"]["ablation"] | {"lr": 2e-5, "patience": 1}
    assert train["per_task"]["ablation"] == per_task  # merged into config.yaml's
    assert config["features"]["token_identity"]["scales"] == [0.5, 2.0]
    assert config["features"]["layer"] is None


@pytest.mark.parametrize(
    ("entry", "fragments"),
    [
        (
            'ablation={"n_per_kind": 160.5}',
            [
                "'ablation.n_per_kind'",
                "'160.5'",
                "'integer'",
                "--config 'ablation={\"n_per_kind\": 480}'",
            ],
        ),
        ("offline=maybe", ["'offline'", "'maybe'", "'boolean'", "--config 'offline=true'"]),
        ("seeds=[0,x]", ["'seeds[1]'", "'x'", "'integer'", "--config 'seeds=[0]'"]),
        (
            'train={"scaling": [4, many]}',
            ["'train.scaling[1]'", "'many'", "'number'", "--config 'train={\"scaling\": [1.0]}'"],
        ),
        (
            'train={"per_task": {"ablation": {"lr": fast}}}',
            ["'train.per_task.ablation.lr'", "'fast'", "'number'", "in a --configfile as"],
        ),
    ],
)
def test_a_bad_override_names_key_value_type_and_a_form_that_works(entry, fragments, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _override(_base_config(), entry)
    with pytest.raises(ValueError, match="^invalid config:") as err:
        check_config(config, SCHEMA)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "160.0" not in message and "plain number" not in message
    # the form the message proposes works
    proposed = re.search(r"--config '([^']+)'", message).group(1)
    assert config_problems(_override(_base_config(), proposed), SCHEMA) == []


def test_uncoerced_text_gets_its_own_value_back_as_the_hint(monkeypatch):
    """check_config alone (no coerce_config, e.g. a caller outside Snakemake) on text it could
    read: the hint shows the value as it should be written, not a float of it."""
    monkeypatch.chdir(REPO)
    config = _base_config()
    config["ablation"]["n_per_kind"] = "160"
    config["offline"] = "false"
    message = "\n".join(config_problems(config, SCHEMA))
    assert "plain number, e.g. 160;" in message and "160.0" not in message
    assert "--config 'ablation={\"n_per_kind\": 160}'" in message
    assert "write it unquoted: false" in message and "--config 'offline=false'" in message


# --------------------------------------------------------------------------- snakemake itself


def _snakemake(tmp_path: Path, *args: str, snakefile: Path = REPO / "Snakefile"):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(tmp_path)]
        + ["-n", "--configfile", str(TINY), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "in_the_dag"),
    [
        # a nested number (as README documents it), nested numbers in a list
        (['ablation={"n_per_kind": 160}', 'train={"scaling": [4, 8]}'], ["/n4/s0/", "/n8/s0/"]),
        (["seeds=[0,1,2]"], ["trained/s2/"]),  # a list
        # a boolean: a hub id not in the cache is fine once offline is false
        (
            ["offline=false", 'models={"hub": "example-org/not-cached"}', "explainers=[tiny, hub]"],
            ["resources/models/hub/"],
        ),
    ],
)
def test_config_overrides_reach_the_dry_run(tmp_path, overrides, in_the_dag):
    proc = _snakemake(tmp_path, "--config", *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for fragment in in_the_dag:
        assert fragment in proc.stdout, proc.stdout[-3000:]
    assert "is extended by additional config" in proc.stdout  # merged, not replaced


def test_config_overrides_reach_the_config_merged(tmp_path):
    """The workflow's own config path (configfile, common.smk), then the config as parsed."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        "import json\n"
        f"configfile: {str(REPO / 'config/config.yaml')!r}\n"
        f"include: {str(REPO / 'workflow/rules/common.smk')!r}\n"
        'print("CONFIG-JSON", json.dumps(config))\n'
    )
    proc = _snakemake(
        tmp_path,
        "--config",
        'ablation={"n_per_kind": 160, "drop_last": false}',
        "seeds=[0,1,2]",
        'train={"group_by_length": true, "lr": 1e-4}',
        snakefile=snakefile,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(re.search(r"^CONFIG-JSON (.*)$", proc.stdout, re.M).group(1))
    assert config["ablation"]["n_per_kind"] == 160 and config["ablation"]["drop_last"] is False
    assert config["ablation"]["test_fraction"] == 0.3  # tiny.yaml's: the section is merged
    assert config["seeds"] == [0, 1, 2]
    assert config["train"]["group_by_length"] is True and config["train"]["lr"] == 1e-4
    assert config["train"]["n_train"] == 24


def test_a_bad_override_stops_the_dry_run_with_a_usable_message(tmp_path):
    proc = _snakemake(tmp_path, "--config", 'ablation={"n_per_kind": many}')
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key 'ablation.n_per_kind': 'many' is not of type 'integer'" in out, out
    assert "--config 'ablation={\"n_per_kind\": 480}'" in out, out
