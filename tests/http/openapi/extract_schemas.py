#!/usr/bin/env python3
"""Extracts from OpenAI's published OpenAPI spec (github.com/openai/openai-openapi, MIT
licence: LICENSE here) the component schemas that the HTTP API's responses must satisfy, with
everything they reference, descriptions dropped, into openai_schemas.json.

usage: extract_schemas.py OPENAPI_JSON [COMMIT]    (writes openai_schemas.json beside itself)
"""
import json
import os
import sys

ROOTS = ["CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
         "CreateCompletionResponse", "ListModelsResponse", "Model", "ErrorResponse",
         "Batch", "OpenAIFile", "ListFilesResponse", "ListBatchesResponse", "DeleteFileResponse"]
# Where the spec's schema types a field that OpenAI's API (and the spec's own examples) sends
# as null: the Batch object's unset optional fields ("errors": null, "output_file_id": null,
# "in_progress_at": null ... in every Batch example of the spec), and an empty list's
# first_id/last_id. These properties also accept null.
NULLABLE = {"Batch": "optional", "ListFilesResponse": ["first_id", "last_id"],
            "ListBatchesResponse": ["first_id", "last_id"]}
DROP = {"description", "example", "examples", "x-oaiMeta", "x-oaiTypeLabel", "title",
        "x-stainless-const", "deprecated"}


def strip(v, names=False):
    """v without documentation keywords, OpenAPI 3.0's `nullable: true` (still in places of
    the 3.1 spec) as JSON Schema's anyOf [v, null]; names: v maps property names to schemas."""
    if isinstance(v, dict):
        out = {k: strip(x, k in ("properties", "patternProperties", "$defs")) for k, x in v.items()
               if names or (k not in DROP and k != "nullable")}
        if not names and v.get("nullable") is True:
            out = {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v


def refs(v, out):
    if isinstance(v, dict):
        r = v.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/schemas/"):
            out.add(r.rsplit("/", 1)[1])
        for x in v.values():
            refs(x, out)
    elif isinstance(v, list):
        for x in v:
            refs(x, out)


def main():
    spec = json.load(open(sys.argv[1]))
    schemas = spec["components"]["schemas"]
    want, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in want:
            continue
        want.add(name)
        found = set()
        refs(schemas[name], found)
        todo.extend(found - want)
    got = {k: strip(schemas[k]) for k in sorted(want)}
    for name, props in NULLABLE.items():
        sch = got[name]
        if props == "optional":
            props = [p for p in sch["properties"] if p not in sch.get("required", [])]
        for p in props:
            sch["properties"][p] = {"anyOf": [sch["properties"][p], {"type": "null"}]}
    out = {"source": "https://github.com/openai/openai-openapi openapi.json" +
           (f" at {sys.argv[2]}" if len(sys.argv) > 2 else ""),
           "openapi": spec["openapi"],
           "components": {"schemas": got}}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_schemas.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(want)} schemas -> {path}")


if __name__ == "__main__":
    main()
