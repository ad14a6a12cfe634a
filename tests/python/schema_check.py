#!/usr/bin/env python3
"""The configuration's JSON Schema (edgehook.schema.json, made from the code) against real
files: each TOML file given must validate; each given after `--bad` must not (the message
names where). Python's jsonschema (Draft 2020-12), as a TOML editor's validator would.

Usage: schema_check.py SCHEMA GOOD.toml... [--bad BAD.toml...]
"""
import json
import sys
import tomllib

import jsonschema

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
args = sys.argv[2:]
bad_from = args.index("--bad") if "--bad" in args else len(args)
failures = []
for i, path in enumerate(args):
    if path == "--bad":
        continue
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    if i < bad_from and errors:
        failures.append(f"{path}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
    if i > bad_from and not errors:
        failures.append(f"{path}: valid, but it should not be")
    if i > bad_from and errors:
        print(f"{path}: refused at {'.'.join(map(str, errors[0].path)) or '(top)'}: {errors[0].message}")
if failures:
    sys.exit("\n".join(failures))
print("ok")
