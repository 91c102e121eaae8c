"""Config checks with messages that name the bad key, its value and what is allowed.

:func:`check_config` runs when the Snakefile is parsed, before any rule: first the JSON schema
(unknown keys, wrong types, values outside their range or list), then what a schema cannot
express: that ``targets``/``explainers`` name keys of ``models``, that each model spec can be
materialised (known tiny/packaged name, existing directory, or a hub id that is allowed or
cached), that sizes fit together and that the files the config names exist.

:func:`coerce_config` runs just before it: ``snakemake --config`` passes every nested value as
text (``--config 'ablation={"n_per_kind": 160}'`` gives ``{"n_per_kind": "160"}``), so text is
read as the type the schema declares at its key (integer, number, boolean, null, arrays and
objects of those). Snakemake merges such a dict key by key into the config file's section.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import jsonschema
import yaml

from selfexplain.core.layout import is_local
from selfexplain.core.registry import TASKS, TRAINED, VARIANTS
from selfexplain.models import PACKAGED, TINY_PREFIX, TINY_SPECS


def load_schema(path: str | Path) -> dict:
    """The config schema with the allowed tasks and variants filled in from the registries
    (core.registry): the YAML file names their type only, so a new task or variant is one
    registry line."""
    schema = yaml.safe_load(Path(path).read_text())
    props = schema["properties"]
    props["tasks"]["items"]["enum"] = list(TASKS)
    props["variants"]["items"]["enum"] = list(VARIANTS)
    props["train"]["properties"]["per_task"]["propertyNames"]["enum"] = list(TASKS)
    props["single_target_tasks"]["items"]["enum"] = list(TASKS)
    return schema


def _key(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _describe(err: jsonschema.ValidationError, root: dict) -> str:
    key = _key(err.absolute_path)
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        where = f"under '{key}'" if err.absolute_path else "at the top level"
        return f"unknown config key(s) {extra} {where}; allowed keys: {allowed}"
    if err.validator == "enum":
        allowed = err.validator_value
        return f"config key '{key}': {err.instance!r} is not allowed; allowed values: {allowed}"
    if err.validator == "required":
        return f"config key '{key}': {err.message}"
    hint = f" ({schema['description']})" if "description" in schema else ""
    if err.validator == "type":
        hint += _type_hint(err, root)
    return f"config key '{key}': {err.message}{hint}"


def _type_hint(err: jsonschema.ValidationError, root: dict) -> str:
    """How to write a value of the wrong type: as a plain number / unquoted, in a --configfile
    and on the command line (--config, where a nested key needs the dict form)."""
    path = list(err.absolute_path)
    hint = ""
    read = _UNREADABLE
    if isinstance(err.instance, str) and isinstance(err.schema, dict):
        # Text that coerce_config reads (snakemake runs it first); YAML 1.1 reads 1e-3 as text.
        read = _from_text(err.instance, err.schema, path, [])
        if isinstance(read, int | float) and not isinstance(read, bool):
            hint += f"; write it as a plain number, e.g. {read!r}"
        elif isinstance(read, bool | None):
            hint += f"; write it unquoted: {json.dumps(read)}"
    items = [i for i, part in enumerate(path) if isinstance(part, int)]
    if items:  # an array's item: show the whole array
        path, read = path[: items[0]], _UNREADABLE
    if not path:
        return hint
    example = read if read is not _UNREADABLE else _example(_schema_at(root, path) or {})
    yaml_form, cli_form = _as_yaml(path, example), _as_cli(path, example)
    return f"{hint}; set it in a --configfile as {yaml_form}, or on the command line as {cli_form}"


def _schema_at(schema: dict, path) -> dict | None:
    """The part of schema that describes the config value at path (keys and indices)."""
    for key in path:
        if not isinstance(schema, dict):
            return None
        if isinstance(key, int):
            schema = schema.get("items")
            continue
        extra = schema.get("additionalProperties")
        schema = schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else None)
    return schema if isinstance(schema, dict) else None


def _example(schema: dict):
    """A value the schema accepts: its default, else a small one of its type."""
    types = _types(schema)
    default = schema.get("default")
    if default not in (None, [], {}):
        return default
    if "enum" in schema:
        return schema["enum"][0]
    if "boolean" in types:
        return True
    if "integer" in types:
        return schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
    if "number" in types:
        return 0.5 if schema.get("exclusiveMaximum", 2) <= 1 else 1.0
    if "array" in types:
        items = schema.get("items")
        return [_example(items)] if isinstance(items, dict) else []
    if "object" in types:
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        if props:
            first = next(iter(props))
            return {first: _example(props[first])}
        return {"name": _example(extra)} if isinstance(extra, dict) else {}
    if "string" in types:
        return "text"
    return None


def _nest(path, value):
    for key in reversed(path[1:]):
        value = {key: value}
    return value


def _as_yaml(path, value) -> str:
    """`section: {key: value}`: the YAML (flow style) that sets path to value in a config file."""

    def flow(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {flow(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    return f"`{path[0]}: {flow(_nest(path, value))}`"


def _as_cli(path, value) -> str:
    """The --config argument that sets path to value (Snakemake accepts no dotted keys)."""
    value = _nest(path, value)
    text = value if isinstance(value, str) else json.dumps(value)
    return f"--config '{path[0]}={text}'"


# ----------------------------------------------------------------- --config overrides

_UNREADABLE = object()  # text that the schema's types cannot read
_INTEGER = re.compile(r"[+-]?\d+")
_NULLS = ("null", "Null", "NULL", "~", "None")  # YAML's nulls, and Python's


def _types(schema: dict) -> set[str]:
    declared = schema.get("type")
    return {declared} if isinstance(declared, str) else set(declared or ())


def _from_text(text: str, schema: dict, path: list, changed: list[str]):
    """text read as a value of the type schema declares, or _UNREADABLE. Text stays text where
    the schema allows a string (or declares no type, e.g. an enum), except a null where null is
    allowed too. Numbers are read with Python's int / float (so 1e-3 is a number, unlike in
    YAML 1.1), true / false in any case, and arrays / objects as YAML flow ([0, 1], {a: 1})."""
    types = _types(schema)
    stripped = text.strip()
    if "null" in types and stripped in _NULLS:
        return None
    if not types or "string" in types:
        return text
    if "boolean" in types and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if types & {"integer", "number"} and _INTEGER.fullmatch(stripped):
        return int(stripped)
    if "number" in types:
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    if types & {"array", "object"} and stripped.startswith(("[", "{")):
        try:
            parsed = yaml.safe_load(stripped)
        except yaml.YAMLError:
            return _UNREADABLE
        kind = "array" if isinstance(parsed, list) else "object" if isinstance(parsed, dict) else ""
        if kind in types:
            return _coerce(parsed, schema, path, changed)
    return _UNREADABLE


def _coerce(value, schema: dict, path: list, changed: list[str]):
    """value with its text read by schema's types (dicts and lists changed in place)."""
    if isinstance(value, str):
        read = _from_text(value, schema, path, changed)
        if read is _UNREADABLE or isinstance(read, str):
            return value  # check_config names it, its type and how to write it
        changed.append(_key(path))
        return read
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_coerce(v, schema["items"], [*path, i], changed) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        for key in list(value):
            sub = _schema_at(schema, [key])
            if sub is not None:  # an unknown key: check_config names it
                value[key] = _coerce(value[key], sub, [*path, key], changed)
    return value


def coerce_config(config: dict, schema: dict | str | Path) -> list[str]:
    """Read config's text values by the types the schema declares at their keys, in place, and
    return the keys read (dotted, e.g. 'ablation.n_per_kind').

    `snakemake --config key=value` passes a nested value as text: ``--config
    'ablation={"n_per_kind": 160}'`` gives ``{"n_per_kind": "160"}`` (YAML's base loader), and
    ``--config offline=false`` the text 'false' (only True / False become booleans there), which
    the schema would reject. Snakemake merges the dict into the config file's section key by key,
    so the section's other keys stay. Text the types cannot read (``n_per_kind: "many"``) is left
    for check_config, which names the key, the value, the type and how to write it.
    """
    if not isinstance(schema, dict):
        schema = load_schema(schema)
    changed: list[str] = []
    _coerce(config, schema, [], changed)
    return changed


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every schema violation of config, one readable line each."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [_describe(e, schema) for e in errors]


def _setting(config: dict, schema: dict, section: str, key: str):
    """config[section][key], or the schema default when the config leaves it out."""
    value = (config.get(section) or {}).get(key)
    if value is None:
        props = schema.get("properties", {}).get(section, {}).get("properties", {})
        value = props.get(key, {}).get("default")
    return value


def _model_name_problems(config: dict) -> list[str]:
    models = config.get("models")
    if not isinstance(models, dict):
        return []
    problems = []
    for key in ("targets", "explainers"):
        names = config.get(key)
        for name in names if isinstance(names, list) else []:
            if isinstance(name, str) and name not in models:
                problems.append(
                    f"config key '{key}' names model '{name}', which is not defined under "
                    f"'models' (defined: {sorted(models)}); add it there or fix the name"
                )
    return problems


def model_spec_problem(spec: str, offline: bool) -> str | None:
    """Why spec cannot be materialised by models.resolve in this setting, or None if it can."""

    allowed = f"packaged: {sorted(PACKAGED)}; tiny: {list(TINY_SPECS)}"
    if spec.startswith(TINY_PREFIX):
        if spec not in TINY_SPECS:
            return f"unknown tiny model {spec!r}; allowed: {list(TINY_SPECS)}"
        return None
    if spec in PACKAGED:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return None
    if spec.startswith(("/", "./", "../", "~")) or path.exists():
        return f"{spec!r} is not an existing model directory (allowed names: {allowed})"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return (
            f"{spec!r} is neither a known model name ({allowed}), nor an existing directory, "
            "nor a valid hub id"
        )
    if offline and not isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return (
            f"{spec!r} is not a known model name ({allowed}) nor an existing directory, so it "
            "would be downloaded as a hub id, but 'offline' is true and it is not in the local "
            "Hugging Face cache; fix the name, or set 'offline: false'"
        )
    return None


def _model_spec_problems(config: dict) -> list[str]:
    models = config.get("models")
    if not isinstance(models, dict):
        return []
    offline = config.get("offline", True) is not False
    used = set(config.get("targets") or []) | set(config.get("explainers") or [])
    problems = []
    for name, spec in sorted(models.items()):
        if name in used and isinstance(spec, str) and spec:
            problem = model_spec_problem(spec, offline)
            if problem:
                problems.append(f"config key 'models.{name}': {problem}")
    return problems


def _size_problems(config: dict, schema: dict) -> list[str]:
    """Settings that each pass the schema but cannot work together."""
    problems = []
    tasks = config.get("tasks") if isinstance(config.get("tasks"), list) else []

    def number(section, key):
        value = _setting(config, schema, section, key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return value if ok else None

    if "patching" in tasks:
        heatmap, max_pairs = number("patching", "heatmap_pairs"), number("patching", "max_pairs")
        if heatmap is not None and max_pairs is not None and heatmap > max_pairs:
            problems.append(
                f"config key 'patching.heatmap_pairs': {heatmap} heatmap pairs cannot come from "
                f"at most {max_pairs} kept pairs (patching.max_pairs); allowed: 0 to {max_pairs}"
            )
    return problems


def _file_problems(config: dict, schema: dict) -> list[str]:
    """Files named by the config must exist (paths are relative to the working directory)."""
    tasks = config.get("tasks") if isinstance(config.get("tasks"), list) else []
    variants = config.get("variants") if isinstance(config.get("variants"), list) else []
    checks = [
        ("ablation", "prompts_file", "ablation" in tasks),
        ("patching", "pairs_file", "patching" in tasks),
        ("train", "deepspeed", TRAINED in variants),
    ]
    values = [(f"{s}.{k}", _setting(config, schema, s, k), used) for s, k, used in checks]
    per_task = (config.get("train") or {}).get("per_task")
    for task, keys in per_task.items() if isinstance(per_task, dict) else []:
        if isinstance(keys, dict) and "deepspeed" in keys:
            used = TRAINED in variants and task in tasks
            values.append((f"train.per_task.{task}.deepspeed", keys["deepspeed"], used))
    problems = []
    for key, value, used in values:
        if used and isinstance(value, str) and value and not os.path.isfile(value):
            problems.append(
                f"config key '{key}': file {value!r} does not exist "
                f"(relative to {os.getcwd()}); fix the path or set it to null"
            )
    return problems


LABEL_IMPORT_TASKS = ("ablation", "hint", "patching")  # tasks with <task>.labels_from


def _labels_from_problems(config: dict) -> list[str]:
    """<task>.labels_from must name targets, and a local dataset must exist."""

    tasks = config.get("tasks") if isinstance(config.get("tasks"), list) else []
    targets = config.get("targets") if isinstance(config.get("targets"), list) else []
    problems = []
    for task in LABEL_IMPORT_TASKS:
        sources = (config.get(task) or {}).get("labels_from")
        if task not in tasks or not isinstance(sources, dict):
            continue
        for target, source in sorted(sources.items()):
            key = f"{task}.labels_from.{target}"
            if target not in targets:
                problems.append(
                    f"config key '{key}': {target!r} is not a target (targets: {targets}); "
                    "name a target model, or add it to 'targets'"
                )
            elif isinstance(source, str) and is_local(source) and not os.path.exists(source):
                problems.append(
                    f"config key '{key}': {source!r} does not exist (relative to "
                    f"{os.getcwd()}); give a parquet / json / jsonl file, a dataset directory "
                    "or a hub id"
                )
    return problems


def _source_problems(config: dict) -> list[str]:
    """A prompt source's local dataset (<task>.dataset with source mmlu / counterfact) must
    exist, and a dataset needs a source that reads it."""

    tasks = config.get("tasks") if isinstance(config.get("tasks"), list) else []
    problems = []
    for task in ("ablation", "hint", "patching"):
        section = config.get(task) or {}
        source, dataset = section.get("source", "generated"), section.get("dataset")
        if task not in tasks or not isinstance(dataset, str) or not dataset:
            continue
        if source == "generated":
            allowed = "counterfact" if task == "patching" else "mmlu"
            problems.append(
                f"config key '{task}.dataset': {dataset!r} is read only by {task}.source "
                f"{allowed!r}, and {task}.source is 'generated'; set {task}.source: {allowed} "
                "or remove the dataset"
            )
        elif is_local(dataset) and not os.path.exists(dataset):
            problems.append(
                f"config key '{task}.dataset': {dataset!r} does not exist (relative to "
                f"{os.getcwd()}); give a parquet / json / jsonl file, a dataset directory or a "
                "hub id"
            )
    return problems


def config_problems(config: dict, schema_path: str | Path) -> list[str]:
    """Every problem of config: schema violations first, then cross-key checks."""
    schema = load_schema(schema_path)
    problems = config_errors(config, schema)
    problems += _model_name_problems(config)
    problems += _size_problems(config, schema)
    problems += _file_problems(config, schema)
    problems += _labels_from_problems(config)
    problems += _source_problems(config)
    if not problems:  # spec checks import the model code: only for an otherwise valid config
        problems += _model_spec_problems(config)
    return problems


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise ValueError listing every problem of config (see config_problems)."""
    problems = config_problems(config, schema_path)
    if problems:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(problems))


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def apply_offline(config: dict) -> None:
    """With config 'offline' true (the default), set HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1
    in this process: every job Snakemake starts from it inherits them, so none contacts a hub."""
    if config.get("offline", True) is not False:
        for name in OFFLINE_ENV:
            os.environ[name] = "1"
