//! Stand-ins for the JSON Schema of the configuration (`edgehook config-schema`): the fields
//! serde reads its own way (durations as `"30s"`, sizes as `"1MiB"` or bytes, secrets).

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// A duration as humantime writes it: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`.
pub struct Duration;

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ms, s, m, h, d), e.g. \"500ms\", \"30s\", \"5m\", \"1h 30m\".",
            "pattern": "^\\s*([0-9]+\\s*(ns|us|µs|ms|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)\\s*)+$"
        })
    }
}

/// A duration, or nothing.
pub struct OptionalDuration;

impl JsonSchema for OptionalDuration {
    fn schema_name() -> Cow<'static, str> {
        "OptionalDuration".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "anyOf": [generator.subschema_for::<Duration>(), { "type": "null" }] })
    }
}

/// A size: bytes, or a number and a unit (`"64KiB"`, `"1MiB"`, `"256MB"`).
pub struct Size;

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes, or a number and a unit: \"64KiB\", \"1MiB\", \"256MB\".",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([kKmMgGtT]i?[bB]|[bB])?\\s*$" }
            ]
        })
    }
}

/// A size, or nothing.
pub struct OptionalSize;

impl JsonSchema for OptionalSize {
    fn schema_name() -> Cow<'static, str> {
        "OptionalSize".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "anyOf": [generator.subschema_for::<Size>(), { "type": "null" }] })
    }
}

impl JsonSchema for crate::secret::Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "writeOnly": true,
            "description": "A secret: better given in the environment (EDGEHOOK_<KEY>, e.g. in /etc/edgehook/edgehook.env) than in the file; never logged or returned."
        })
    }
}
