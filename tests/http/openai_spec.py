"""OpenAI's published response schemas (openapi/openai_schemas.json, extracted from
github.com/openai/openai-openapi by openapi/extract_schemas.py, MIT licence) as a checker for
the HTTP API's tests. Needs Debian's python3-jsonschema; without it `available` is False and
nothing is checked."""
import json
import os

try:
    import jsonschema
except ImportError:  # pragma: no cover
    jsonschema = None

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "openapi", "openai_schemas.json")) as _f:
    _ROOT = json.load(_f)
available = jsonschema is not None
_validators = {}


def errors(name, obj):
    """The schema violations of obj against components.schemas[name] (strings; [] if valid)."""
    if not available:
        return []
    v = _validators.get(name)
    if v is None:
        schema = {"components": _ROOT["components"], "$ref": f"#/components/schemas/{name}"}
        v = _validators[name] = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in v.iter_errors(obj)]
