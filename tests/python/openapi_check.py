#!/usr/bin/env python3
"""Checks edgehook's OpenAPI document and responses against it, independently of edgehook's
code: the document with openapi-spec-validator, each response body with
openapi-schema-validator (OpenAPI 3.1 schemas), both from PyPI.

Usage: openapi_check.py DOC.json EXCHANGES.json
EXCHANGES is a JSON array of {"method", "path" (the template, e.g. /v1/endpoints/{name}),
"status", "body"} made by the Rust test that called the daemon. Exits non-zero, saying which,
when the document is invalid, a response is not documented (path, method or status), or a
body does not match its schema. (That every documented operation is called is checked
by tests/api.rs itself: its tests each call some.)
"""
import json
import sys

from openapi_spec_validator import validate as validate_spec
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012


def main():
    doc = json.load(open(sys.argv[1]))
    exchanges = json.load(open(sys.argv[2]))
    validate_spec(doc)
    registry = Registry().with_resource("urn:edgehook", Resource.from_contents(doc, default_specification=DRAFT202012))
    failures = []
    for x in exchanges:
        method, path, status = x["method"].lower(), x["path"], str(x["status"])
        op = doc["paths"].get(path, {}).get(method)
        if op is None:
            failures.append(f"{method.upper()} {path}: not in the document")
            continue
        response = op["responses"].get(status)
        if response is None:
            failures.append(f"{method.upper()} {path}: status {status} not documented ({sorted(op['responses'])})")
            continue
        content = response.get("content")
        if content is None:
            if x.get("body") not in (None, ""):
                failures.append(f"{method.upper()} {path} {status}: a body where none is documented")
            continue
        media = next(iter(content))
        if media != "application/json":
            continue
        schema = content[media]["schema"]
        if "$ref" in schema:
            schema = {"$ref": "urn:edgehook" + schema["$ref"]}
        else:
            schema = json.loads(json.dumps(schema).replace('"#/components', '"urn:edgehook#/components'))
        validator = OAS31Validator(schema, registry=registry)
        errors = sorted(validator.iter_errors(x["body"]), key=lambda e: list(e.path))
        for e in errors[:3]:
            where = "/".join(str(p) for p in e.path)
            failures.append(f"{method.upper()} {path} {status}: at `{where}`: {e.message}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"openapi_check: the document is valid; {len(exchanges)} responses match it")


if __name__ == "__main__":
    main()
