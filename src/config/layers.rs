//! The configuration's layers, merged into one TOML tree that `Config` is read from: the
//! built-in defaults, then the TOML file, then `EDGEHOOK_*` environment variables. A table
//! merges key by key; any other value (an array too) replaces what the layer below had. The
//! tree remembers which keys the environment set, so that an error names the variable, not
//! the file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// The merged layers.
pub(super) struct Layers {
    tree: Table,
    /// The file the TOML came from, if it came from one.
    file: Option<PathBuf>,
    /// What the environment set: the key (lower-case path segments), the variable and its text.
    env: Vec<EnvSet>,
}

/// A key the environment set.
struct EnvSet {
    path: Vec<String>,
    name: String,
    raw: String,
}

/// Why the merged tree is not a configuration: the key (path segments; empty for none) and
/// what is wrong.
pub(super) struct ReadError {
    pub(super) path: Vec<String>,
    pub(super) message: String,
}

impl Layers {
    /// The defaults: `defaults` as a TOML tree.
    pub(super) fn new<T: Serialize>(defaults: &T) -> Result<Layers, String> {
        let tree = Table::try_from(defaults).map_err(|e| format!("the built-in defaults: {e}"))?;
        Ok(Layers {
            tree,
            file: None,
            env: Vec::new(),
        })
    }

    /// TOML text over what is there; `file` is where it came from. A syntax error is the
    /// parser's message, with the line and column.
    pub(super) fn merge_toml(&mut self, text: &str, file: Option<&Path>) -> Result<(), String> {
        self.file = file.map(Path::to_path_buf);
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            e.to_string()
                .trim_start_matches("TOML parse error ")
                .trim_end()
                .to_string()
        })?;
        merge(&mut self.tree, table);
        Ok(())
    }

    /// The variables `prefix`KEY (prefix in any case; KEY's levels joined by `__`) over what
    /// is there, except those whose KEY is in `skip`. Values are read by [`env_value`].
    pub(super) fn merge_env(
        &mut self,
        prefix: &str,
        skip: &[&str],
        vars: impl IntoIterator<Item = (String, String)>,
    ) {
        for (name, raw) in vars {
            let Some(key) = name
                .get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .map(|_| &name[prefix.len()..])
            else {
                continue;
            };
            if key.is_empty() || skip.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                continue;
            }
            let path: Vec<String> = key
                .to_ascii_lowercase()
                .split("__")
                .map(String::from)
                .collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            insert(&mut self.tree, &path, env_value(&raw));
            self.env.retain(|set| !set.path.starts_with(&path));
            self.env.push(EnvSet { path, name, raw });
        }
    }

    /// The configuration the merged tree describes. A variable's text that reads as a number or
    /// a boolean where the key wants text is that text (`EDGEHOOK_MQTT__PASSWORD=123456`).
    pub(super) fn read<T: DeserializeOwned>(&self) -> Result<T, ReadError> {
        let mut tree = self.tree.clone();
        // Each pass turns one variable's value into its text, or ends: it terminates.
        loop {
            let e = match Self::read_tree(&tree) {
                Ok(config) => return Ok(config),
                Err(e) => e,
            };
            let lower: Vec<String> = e.path.iter().map(|s| s.to_ascii_lowercase()).collect();
            let set = self.env.iter().find(|set| set.path == lower);
            match set {
                Some(set)
                    if e.message.starts_with("invalid type")
                        && !matches!(value_in(&tree, &set.path), Some(Value::String(_))) =>
                {
                    insert(&mut tree, &set.path, Value::String(set.raw.clone()));
                }
                _ => return Err(e),
            }
        }
    }

    fn read_tree<T: DeserializeOwned>(tree: &Table) -> Result<T, ReadError> {
        serde_path_to_error::deserialize(Value::Table(tree.clone())).map_err(|e| {
            let mut path: Vec<String> = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            let message = e.into_inner().message().to_string();
            // serde stops at the table that has the unknown key: name the key itself.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
            {
                if path.last().map(String::as_str) != Some(field) {
                    path.push(field.to_string());
                }
            }
            ReadError { path, message }
        })
    }

    /// The value at `path` in the merged tree, if there is one.
    pub(super) fn value_at(&self, path: &[String]) -> Option<&Value> {
        value_in(&self.tree, path)
    }

    /// Where the value at `path` came from: the environment variable that set it or a table
    /// above it, else the file (also for a default: the file is where to set it), else
    /// "configuration" (TOML given as text).
    pub(super) fn source_of(&self, path: &[String]) -> String {
        let lower: Vec<String> = path.iter().map(|s| s.to_ascii_lowercase()).collect();
        if let Some(set) = self.env.iter().find(|set| lower.starts_with(&set.path)) {
            return format!("environment variable {}", set.name);
        }
        match &self.file {
            Some(file) => file.display().to_string(),
            None => "configuration".into(),
        }
    }
}

/// The value at `path` in `tree`, if there is one.
fn value_in<'t>(tree: &'t Table, path: &[String]) -> Option<&'t Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(tree.get(first)?, |value, segment| match value {
            Value::Table(t) => t.get(segment),
            Value::Array(a) => a.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

/// `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `value` at `path` in `tree`, making (or replacing with) tables on the way.
fn insert(tree: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = tree;
    for segment in parents {
        let entry = table
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else {
            unreachable!("made a table just above")
        };
        table = next;
    }
    table.insert(last.clone(), value);
}

/// An environment variable's value: the TOML value it spells; else a list `[a, b]` or a table
/// `{k = v}` whose items are read the same way, so that words need no quotes
/// (`[zigbee2mqtt, tasmota]`); else the text itself.
fn env_value(raw: &str) -> Value {
    let text = raw.trim();
    match format!("v = {text}").parse::<Table>() {
        // One key only: a value with a line break in it cannot add keys of its own.
        Ok(mut t) if t.len() == 1 => {
            if let Some(v) = t.remove("v") {
                return v;
            }
        }
        _ => {}
    }
    let inner = |open: char, close: char| {
        text.strip_prefix(open)
            .and_then(|t| t.strip_suffix(close))
            .map(|t| items(t).filter(|item| !item.trim().is_empty()))
    };
    if let Some(list) = inner('[', ']') {
        return Value::Array(list.map(|item| env_value(item.trim())).collect());
    }
    if let Some(entries) = inner('{', '}') {
        let table: Option<Table> = entries
            .map(|entry| {
                let (key, value) = entry.split_once('=')?;
                let key = key.trim().trim_matches('"');
                Some((key.to_string(), env_value(value.trim())))
            })
            .collect();
        if let Some(table) = table {
            return Value::Table(table);
        }
    }
    Value::String(raw.into())
}

/// `text` split at its commas that are outside brackets, braces and quotes.
fn items(text: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0i32;
    let mut quote = None;
    let mut start = 0;
    let mut cuts = Vec::new();
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                cuts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&text[start..]);
    cuts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn environment_values_are_toml_values_or_text() {
        #[rustfmt::skip]
        let table: &[(&str, Value)] = &[
            ("1884", Value::Integer(1884)),
            ("true", Value::Boolean(true)),
            ("[]", Value::Array(vec![])),
            ("[\"zigbee2mqtt\"]", Value::Array(vec![Value::String("zigbee2mqtt".into())])),
            ("\"quoted\"", Value::String("quoted".into())),
            ("0.0.0.0:9187", Value::String("0.0.0.0:9187".into())),
            ("ftp://nope", Value::String("ftp://nope".into())),
            ("", Value::String("".into())),
            ("1\nother = 2", Value::String("1\nother = 2".into())),
            ("[zigbee2mqtt, tasmota]", Value::Array(vec![Value::String("zigbee2mqtt".into()), Value::String("tasmota".into())])),
            ("[1, two, [x, \"y, z\"]]", Value::Array(vec![
                Value::Integer(1),
                Value::String("two".into()),
                Value::Array(vec![Value::String("x".into()), Value::String("y, z".into())]),
            ])),
            ("{topic = a/b, kind = reading}", Value::Table(
                [("topic".to_string(), Value::String("a/b".into())), ("kind".to_string(), Value::String("reading".into()))].into_iter().collect(),
            )),
            ("{no equals}", Value::String("{no equals}".into())),
            ("[a, b", Value::String("[a, b".into())),
        ];
        for (raw, want) in table {
            assert_eq!(&env_value(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn tables_merge_and_everything_else_is_replaced_and_the_environment_is_remembered() {
        let mut l = Layers {
            tree: "a = 1\nlist = [1, 2]\n[t]\nx = 1\ny = 2\n".parse().unwrap(),
            file: None,
            env: Vec::new(),
        };
        l.merge_toml(
            "list = [3]\n[t]\ny = 3\nz = 4\n",
            Some(Path::new("/etc/e.toml")),
        )
        .unwrap();
        l.merge_env(
            "EDGEHOOK_",
            &["LOG"],
            [
                ("EDGEHOOK_T__X".to_string(), "5".to_string()),
                ("edgehook_A__DEEP".to_string(), "x".to_string()),
                ("EDGEHOOK_LOG".to_string(), "debug".to_string()),
                ("EDGEHOOK_BAD____KEY".to_string(), "1".to_string()),
                ("OTHER_T__X".to_string(), "6".to_string()),
            ],
        );
        let want: Table = "list = [3]\n[a]\ndeep = \"x\"\n[t]\nx = 5\ny = 3\nz = 4\n"
            .parse()
            .unwrap();
        assert_eq!(l.tree, want);
        assert_eq!(
            l.source_of(&strings(&["t", "x"])),
            "environment variable EDGEHOOK_T__X"
        );
        assert_eq!(
            l.source_of(&strings(&["A", "deep", "0"])),
            "environment variable edgehook_A__DEEP"
        );
        assert_eq!(l.source_of(&strings(&["t", "y"])), "/etc/e.toml");
        assert_eq!(l.source_of(&strings(&["t"])), "/etc/e.toml");
        assert_eq!(
            l.value_at(&strings(&["list", "0"])),
            Some(&Value::Integer(3))
        );
        assert_eq!(l.value_at(&strings(&["t", "x", "y"])), None);
    }

    /// A numeric password or id given in the environment was refused: "invalid type: integer
    /// `123456`, expected a string".
    #[test]
    fn a_number_in_the_environment_is_text_where_the_key_wants_text() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Mqtt {
            port: u16,
            password: String,
        }
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Conf {
            id: String,
            mqtt: Mqtt,
        }
        let env = |vars: &[(&str, &str)]| {
            let mut l = Layers::new(&Table::new()).unwrap();
            l.merge_toml("id = \"gw\"\n[mqtt]\nport = 1883\npassword = \"p\"\n", None)
                .unwrap();
            let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            l.merge_env("EDGEHOOK_", &[], vars);
            l.read::<Conf>()
        };
        let c = env(&[
            ("EDGEHOOK_ID", "1234"),
            ("EDGEHOOK_MQTT__PASSWORD", "007"),
            ("EDGEHOOK_MQTT__PORT", "1884"),
        ])
        .unwrap_or_else(|e| panic!("{}: {}", e.path.join("."), e.message));
        assert_eq!(
            c,
            Conf {
                id: "1234".into(),
                mqtt: Mqtt {
                    port: 1884,
                    password: "007".into()
                }
            }
        );
        let c =
            env(&[("EDGEHOOK_MQTT__PASSWORD", "true")]).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(c.mqtt.password, "true");
        // A number is still refused where the key wants one and the text is not one.
        let e = env(&[("EDGEHOOK_MQTT__PORT", "high")]).unwrap_err();
        assert_eq!(e.path, ["mqtt", "port"]);
        assert!(e.message.contains("\"high\""), "{}", e.message);
        // A type error from the file is the file's, as it was.
        let mut l = Layers::new(&Table::new()).unwrap();
        l.merge_toml("id = 5\n[mqtt]\nport = 1\npassword = \"p\"\n", None)
            .unwrap();
        assert!(l.read::<Conf>().is_err());
    }

    #[test]
    fn syntax_errors_keep_the_line_and_column() {
        let mut l = Layers::new(&Table::new()).unwrap();
        let e = l.merge_toml("a = 1\n[b\n", None).unwrap_err();
        assert!(e.starts_with("at line 2"), "{e}");
    }
}
