"""Config checks with messages that name the bad key, its value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml


def _key(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _describe(err: jsonschema.ValidationError) -> str:
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
    return f"config key '{key}': {err.message}{hint}"


def config_errors(config: dict, schema: dict) -> list[str]:
    """Every schema violation of config, one readable line each."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [_describe(e) for e in errors]


def check_config(config: dict, schema_path: str | Path) -> None:
    """Raise ValueError listing every problem of config against the schema and model names."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    problems = config_errors(config, schema)
    models = config.get("models")
    if isinstance(models, dict):
        for key in ("targets", "explainers"):
            for name in config.get(key) or []:
                if isinstance(name, str) and name not in models:
                    problems.append(
                        f"config key '{key}' names model '{name}', which is not defined under "
                        f"'models' (defined: {sorted(models)}); add it there or fix the name"
                    )
    if problems:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(problems))
