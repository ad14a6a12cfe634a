//! The endpoints and where each comes from: the configuration file, or the control API
//! (persisted in the state directory as `endpoints.json`, mode 0600: it holds their secrets).
//! One source of truth per endpoint: a name in both is refused — 409 from the API; on SIGHUP
//! and by `check-config`, an error naming the file's endpoint and the API's. A start is never
//! refused for it (that would stop every device and endpoint for one name): the API's endpoint
//! runs, the file's of the same name is set aside, and the error is logged. The rules for a change
//! ([`Endpoints::plan`]) are pure: they give the new store, or why not, before anything is
//! written or applied.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::deliver::config::WebhookConfig;
use crate::deliver::fleet::Wanted;

/// The API's endpoints' file in the state directory.
pub const FILE: &str = "endpoints.json";

/// Where an endpoint is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file: edited there, applied on SIGHUP.
    File,
    /// The control API: edited through it, persisted in [`FILE`].
    Api,
}

/// What the API keeps, as it is on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub endpoints: Vec<WebhookConfig>,
    /// Endpoints deleted with `pending=drain`: they queue nothing new, deliver what they hold,
    /// and are removed once their queue is empty.
    #[serde(default)]
    pub draining: Vec<String>,
}

/// What to do with a deleted endpoint's pending events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// Refuse the delete while any are pending (the default).
    Refuse,
    /// Deliver them first; the endpoint goes once its queue is empty.
    Drain,
    /// Delete them with the endpoint (and its dead letters).
    Purge,
}

/// A change asked of the API.
#[derive(Debug, Clone)]
pub enum Change {
    Create(Value),
    Replace(String, Value),
    /// A JSON merge patch (RFC 7396) over the endpoint's settings.
    Patch(String, Value),
    Delete(String, Pending),
}

/// Why a change is refused: the HTTP status, the field at fault (if one is), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// Every endpoint, from the file and from the API.
#[derive(Debug)]
pub struct Endpoints {
    file: Vec<WebhookConfig>,
    api: Stored,
    path: PathBuf,
}

impl Endpoints {
    /// The API's endpoints in `state_dir` beside the file's `file`. Fails when the API's file
    /// is unreadable. A file endpoint named as an API one is set aside (not run): the second
    /// value says which, as [`Endpoints::set_file`] would refuse it.
    pub fn load(
        state_dir: &Path,
        file: Vec<WebhookConfig>,
    ) -> Result<(Endpoints, Option<String>), String> {
        let path = state_dir.join(FILE);
        let api = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: not an endpoints file ({})",
                    path.display(),
                    crate::secret::without_value(&e.to_string())
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut endpoints = Endpoints {
            file: Vec::new(),
            api,
            path,
        };
        let conflict = endpoints.check_file(&file).err();
        endpoints.file = file
            .into_iter()
            .filter(|f| !endpoints.api.endpoints.iter().any(|a| a.name == f.name))
            .collect();
        Ok((endpoints, conflict))
    }

    /// Take the file's endpoints anew (SIGHUP). ApiError, changing nothing, when one has the
    /// name of an API endpoint.
    pub fn set_file(&mut self, file: Vec<WebhookConfig>) -> Result<(), String> {
        self.check_file(&file)?;
        self.file = file;
        Ok(())
    }

    fn check_file(&self, file: &[WebhookConfig]) -> Result<(), String> {
        match file
            .iter()
            .find(|f| self.api.endpoints.iter().any(|a| a.name == f.name))
        {
            Some(both) => Err(format!(
                "endpoint `{}` is defined in the configuration file and through the control API ({}): one source of truth per endpoint — remove it from the file, or delete it through the API (edgehook endpoints delete {})",
                both.name,
                self.path.display(),
                both.name
            )),
            None => Ok(()),
        }
    }

    /// Every endpoint: the file's, then the API's, with where it is from and whether it is
    /// draining before its deletion.
    pub fn list(&self) -> Vec<(&WebhookConfig, Source, bool)> {
        let file = self.file.iter().map(|e| (e, Source::File, false));
        let api = self
            .api
            .endpoints
            .iter()
            .map(|e| (e, Source::Api, self.api.draining.contains(&e.name)));
        file.chain(api).collect()
    }

    pub fn get(&self, name: &str) -> Option<(&WebhookConfig, Source, bool)> {
        self.list().into_iter().find(|(e, _, _)| e.name == name)
    }

    /// How each endpoint should run.
    pub fn wanted(&self) -> Vec<Wanted> {
        self.list()
            .into_iter()
            .map(|(config, _, draining)| Wanted {
                config: config.clone(),
                queue_new: !draining,
            })
            .collect()
    }

    /// The API's endpoints after `change`, checked as the configuration is, or why not.
    /// `pending(name)` is how many events wait for an endpoint.
    pub fn plan(
        &self,
        change: &Change,
        pending: impl Fn(&str) -> usize,
    ) -> Result<Stored, ApiError> {
        let mut next = self.api.clone();
        match change {
            Change::Create(body) => {
                let config = parse(body.clone())?;
                if let Some((_, source, _)) = self.get(&config.name) {
                    let place = match source {
                        Source::File => "in the configuration file",
                        Source::Api => "already",
                    };
                    return Err(ApiError::new(
                        409,
                        Some("name"),
                        format!("an endpoint named `{}` exists {place}", config.name),
                    ));
                }
                let max = crate::deliver::config::MAX_ENDPOINTS;
                if self.list().len() >= max {
                    return Err(ApiError::new(
                        409,
                        None,
                        format!("this gateway runs {max} endpoints already, its most (delete one first)"),
                    ));
                }
                next.endpoints.push(config);
            }
            Change::Replace(name, body) => {
                let i = self.api_index(name)?;
                let config = parse(body.clone())?;
                if &config.name != name {
                    return Err(ApiError::new(
                        400,
                        Some("name"),
                        format!(
                            "an endpoint's name cannot change (`{name}` here); create a new one"
                        ),
                    ));
                }
                next.endpoints[i] = config;
            }
            Change::Patch(name, patch) => {
                let i = self.api_index(name)?;
                if !patch.is_object() {
                    return Err(ApiError::new(400, None, "a patch is a JSON object"));
                }
                let mut merged = serde_json::to_value(&next.endpoints[i]).expect("serialises");
                merge(&mut merged, patch);
                let config = parse(merged)?;
                if &config.name != name {
                    return Err(ApiError::new(
                        400,
                        Some("name"),
                        "an endpoint's name cannot change; create a new one",
                    ));
                }
                next.endpoints[i] = config;
            }
            Change::Delete(name, how) => {
                let i = self.api_index(name)?;
                let waiting = pending(name);
                match how {
                    Pending::Refuse if waiting > 0 => {
                        return Err(ApiError::new(
                            409,
                            None,
                            format!("{waiting} event(s) are pending for `{name}`: delete with pending=drain to deliver them first, or pending=purge to delete them (edgehook endpoints delete {name} --pending drain|purge)"),
                        ))
                    }
                    Pending::Drain if waiting > 0 => {
                        if !next.draining.contains(name) {
                            next.draining.push(name.clone());
                        }
                    }
                    _ => {
                        next.endpoints.remove(i);
                        next.draining.retain(|d| d != name);
                    }
                }
            }
        }
        Ok(next)
    }

    /// An API endpoint's place, or why the change cannot be made to `name`.
    fn api_index(&self, name: &str) -> Result<usize, ApiError> {
        match self.get(name) {
            None => Err(ApiError::new(404, None, format!("no endpoint `{name}`"))),
            Some((_, Source::File, _)) => Err(ApiError::new(
                409,
                None,
                format!("`{name}` is defined in the configuration file: edit it there and reload (systemctl reload edgehook)"),
            )),
            Some(_) => Ok(self
                .api
                .endpoints
                .iter()
                .position(|e| e.name == name)
                .expect("found above")),
        }
    }

    /// Make `next` the API's endpoints: written (whole, synced, then renamed over the old
    /// file) before it is taken, so what is applied is always what a restart finds.
    pub fn commit(&mut self, next: Stored) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&next).expect("serialises");
        crate::atomic_file::replace(&self.path, &bytes, 0o600)?;
        self.api = next;
        Ok(())
    }

    /// The API's endpoints now (for a plan that removes a drained one).
    pub fn stored(&self) -> &Stored {
        &self.api
    }
}

/// An endpoint's settings from a request body, checked as the configuration checks them.
fn parse(body: Value) -> Result<WebhookConfig, ApiError> {
    let config: WebhookConfig = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        // Never the value given where a secret belongs (#43.15), as the configuration's
        // errors do (`config::is_secret_key`).
        let text = e.into_inner().to_string();
        let text = if crate::config::is_secret_key(&path) {
            crate::secret::without_value(&text)
        } else {
            text
        };
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("unknown field") || text.starts_with("missing field"))
            .map(str::to_string)
            .or_else(|| (path != ".").then_some(path));
        ApiError {
            status: 400,
            field,
            message: format!("not an endpoint: {text}"),
        }
    })?;
    if config.name.is_empty() {
        return Err(ApiError::new(400, Some("name"), "must be set"));
    }
    crate::deliver::config::validate(None, std::slice::from_ref(&config)).map_err(
        |(key, why)| {
            let field = key.strip_prefix("endpoints[0].").unwrap_or(&key);
            ApiError::new(400, Some(field), why)
        },
    )?;
    Ok(config)
}

/// RFC 7396: `patch`'s members replace `target`'s, objects merge, `null` removes.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The top-level settings that differ between two endpoints, for the log: names only (the
/// values may be secrets).
pub fn changed(old: &WebhookConfig, new: &WebhookConfig) -> Vec<String> {
    let (Value::Object(a), Value::Object(b)) = (
        serde_json::to_value(old).expect("serialises"),
        serde_json::to_value(new).expect("serialises"),
    ) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file_endpoint(name: &str) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: "https://hooks.example.com/in".into(),
            secret: crate::secret::Secret::new("s3cret-value"),
            ..WebhookConfig::default()
        }
    }

    fn body(name: &str) -> Value {
        json!({"name": name, "url": "https://crm.example.com/hooks", "secret": "another-secret", "events": ["device.*"]})
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn each_change_gives_the_new_store_or_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (mut eps, _) = Endpoints::load(dir.path(), vec![file_endpoint("default")]).unwrap();
        let none = |_: &str| 0;
        let next = eps.plan(&Change::Create(body("crm")), none).unwrap();
        eps.commit(next).unwrap();
        let refused = |change: Change, pending: usize| eps.plan(&change, |_| pending).unwrap_err();
        #[rustfmt::skip]
        let table: Vec<(&str, Change, usize, u16, Option<&str>, &str)> = vec![
            ("a name the file has", Change::Create(body("default")), 0, 409, Some("name"), "configuration file"),
            ("a name the API has", Change::Create(body("crm")), 0, 409, Some("name"), "exists already"),
            ("http:// as the config refuses it", Change::Create(json!({"name": "x", "url": "http://crm.example.com/", "secret": "s"})), 0, 400, Some("url"), "clear text"),
            ("an unknown setting", Change::Create(json!({"name": "x", "url": "https://a.example/", "secret": "s", "colour": 1})), 0, 400, Some("colour"), "unknown field"),
            ("no secret", Change::Create(json!({"name": "x", "url": "https://a.example/"})), 0, 400, Some("secret"), "must be set"),
            ("no events", Change::Create(json!({"name": "x", "url": "https://a.example/", "secret": "s", "events": []})), 0, 400, Some("events"), "must list"),
            ("a bad name", Change::Create(json!({"name": "a b", "url": "https://a.example/", "secret": "s"})), 0, 400, Some("name"), "letters"),
            ("a duration that is not one", Change::Create(json!({"name": "x", "url": "https://a.example/", "secret": "s", "timeout": "soon"})), 0, 400, Some("timeout"), "not an endpoint"),
            ("editing the file's endpoint", Change::Patch("default".into(), json!({"active": false})), 0, 409, None, "configuration file"),
            ("editing no endpoint", Change::Patch("nope".into(), json!({})), 0, 404, None, "no endpoint"),
            ("renaming by a patch", Change::Patch("crm".into(), json!({"name": "crm2"})), 0, 400, Some("name"), "cannot change"),
            ("a patch that breaks it", Change::Patch("crm".into(), json!({"url": "ftp://x"})), 0, 400, Some("url"), "https"),
            ("replacing under another name", Change::Replace("crm".into(), body("other")), 0, 400, Some("name"), "cannot change"),
            ("deleting with events pending", Change::Delete("crm".into(), Pending::Refuse), 3, 409, None, "pending=drain"),
            ("deleting the file's endpoint", Change::Delete("default".into(), Pending::Purge), 0, 409, None, "configuration file"),
        ];
        for (what, change, pending, status, field, says) in table {
            let r = refused(change, pending);
            assert_eq!(
                (r.status, r.field.as_deref()),
                (status, field),
                "{what}: {r:?}"
            );
            assert!(r.message.contains(says), "{what}: {}", r.message);
        }
        // What goes through.
        let patched = eps
            .plan(
                &Change::Patch(
                    "crm".into(),
                    json!({"active": false, "retry": {"max": "1m"}}),
                ),
                none,
            )
            .unwrap();
        let crm = &patched.endpoints[0];
        assert!(!crm.active);
        assert_eq!(crm.retry.max, std::time::Duration::from_secs(60));
        assert_eq!(
            crm.retry.initial,
            std::time::Duration::from_secs(1),
            "merged, not replaced"
        );
        assert_eq!(
            crm.secret.expose(),
            "another-secret",
            "a patch keeps the secret"
        );
        assert_eq!(
            changed(&eps.stored().endpoints[0], crm),
            ["active", "retry"]
        );
        let drain = eps
            .plan(&Change::Delete("crm".into(), Pending::Drain), |_| 2)
            .unwrap();
        assert_eq!(
            (drain.endpoints.len(), drain.draining.as_slice()),
            (1, ["crm".to_string()].as_slice())
        );
        let drained = eps
            .plan(&Change::Delete("crm".into(), Pending::Drain), none)
            .unwrap();
        assert!(
            drained.endpoints.is_empty(),
            "nothing pending: gone at once"
        );
        let purged = eps
            .plan(&Change::Delete("crm".into(), Pending::Purge), |_| 5)
            .unwrap();
        assert!(purged.endpoints.is_empty());
    }

    /// #43.14: endpoints made through the API had no cap (400 took the daemon past 100 MB).
    #[test]
    fn the_endpoints_a_gateway_runs_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let max = crate::deliver::config::MAX_ENDPOINTS;
        let (mut eps, _) = Endpoints::load(dir.path(), vec![file_endpoint("default")]).unwrap();
        for i in 1..max {
            let next = eps
                .plan(&Change::Create(body(&format!("e{i}"))), |_| 0)
                .unwrap();
            eps.commit(next).unwrap();
        }
        assert_eq!(eps.list().len(), max);
        let refused = eps
            .plan(&Change::Create(body("one-more")), |_| 0)
            .unwrap_err();
        assert_eq!(refused.status, 409);
        assert!(refused.message.contains("delete one first"), "{refused:?}");
        // One deleted makes room.
        let next = eps
            .plan(&Change::Delete("e1".into(), Pending::Refuse), |_| 0)
            .unwrap();
        eps.commit(next).unwrap();
        assert!(eps.plan(&Change::Create(body("one-more")), |_| 0).is_ok());
        // The file is held to the same cap.
        let many: Vec<WebhookConfig> = (0..=max).map(|i| file_endpoint(&format!("f{i}"))).collect();
        let (key, why) = crate::deliver::config::validate(None, &many).unwrap_err();
        assert_eq!(key, "endpoints");
        assert!(why.contains("at most"), "{why}");
    }

    #[test]
    fn the_store_survives_a_restart_and_a_name_in_both_places_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (mut eps, _) = Endpoints::load(dir.path(), vec![file_endpoint("default")]).unwrap();
        let next = eps.plan(&Change::Create(body("crm")), |_| 0).unwrap();
        eps.commit(next.clone()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "it holds secrets");
        let (again, conflict) =
            Endpoints::load(dir.path(), vec![file_endpoint("default")]).unwrap();
        assert_eq!(conflict, None);
        let json = |s: &Stored| serde_json::to_value(s).unwrap();
        assert_eq!(json(again.stored()), json(&next));
        let names: Vec<(&str, Source)> = again
            .list()
            .iter()
            .map(|(e, s, _)| (e.name.as_str(), *s))
            .collect();
        assert_eq!(names, [("default", Source::File), ("crm", Source::Api)]);
        // #43.13: a start is not refused for a name in both: the API's runs, the file's is
        // set aside, and why is said.
        let (both, conflict) = Endpoints::load(
            dir.path(),
            vec![file_endpoint("crm"), file_endpoint("default")],
        )
        .unwrap();
        let err = conflict.unwrap();
        assert!(err.contains("`crm`") && err.contains(FILE), "{err}");
        let names: Vec<(&str, Source)> = both
            .list()
            .iter()
            .map(|(e, s, _)| (e.name.as_str(), *s))
            .collect();
        assert_eq!(names, [("default", Source::File), ("crm", Source::Api)]);
        let mut eps = again;
        assert!(eps.set_file(vec![file_endpoint("crm")]).is_err());
        assert_eq!(eps.list().len(), 2, "a refused reload changes nothing");
    }
}
