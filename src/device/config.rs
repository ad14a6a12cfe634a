//! `[devices]`, `[[device_classes]]` and `[[workspaces]]`: the device stage's configuration
//! and its checks (run by `check-config` and at start, as every stage's are).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one kind of device is watched and reported: health (heartbeat, lost communication,
/// debounce) and readings (deadband, coalescing, re-reporting, staleness).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceClassConfig {
    pub name: String,
    /// Device id patterns: `*` matches any run of characters, `?` one character.
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// How often the device reports when all is well (any message counts). Unset: the device
    /// is never declared lost.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub heartbeat: Option<Duration>,
    /// Silence of `lost_after` heartbeats makes the device `device.lost_communication`.
    #[serde(default = "default_lost_after")]
    pub lost_after: f64,
    /// An offline report is held this long; if the device is back within it, nothing is sent.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub debounce: Duration,
    /// Readings stopping this long makes `sensor.reading.stale`. Unset: never stale.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub stale_after: Option<Duration>,
    /// At most one `sensor.reading.updated` per device per interval; changes in between are
    /// coalesced and sent, with the latest values, when it has passed.
    #[serde(default, with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub min_interval: Duration,
    /// A reading this long after the last report is sent even if nothing changed (a heartbeat
    /// upstream). Unset: only changes are sent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub max_interval: Option<Duration>,
    /// Per numeric field, the smallest move (absolute) that counts as a change.
    #[serde(default)]
    pub deadband: BTreeMap<String, f64>,
    /// The field of a reading that holds the device's firmware or app version: when its value
    /// changes, `device.app_updated` tells the old and the new one. Empty: none.
    #[serde(default)]
    pub version_field: String,
    /// Fields of a device's first reading that say what it is (model, firmware), carried in
    /// `device.registered`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_fields: Vec<String>,
    /// A device not heard from this long is forgotten: `device.unregistered`, its state
    /// removed (it is registered again if it comes back). Unset: never.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub forget_after: Option<Duration>,
    /// Fields that tell the device's condition rather than what it senses (battery level,
    /// low-battery flag, tamper, error code): kept apart from readings and reported as
    /// `sensor.state.updated` when they change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_fields: Vec<String>,
    /// Per numeric state field, the smallest move that counts as a change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state_deadband: BTreeMap<String, f64>,
    /// The field (in readings) holding the version or configuration the device runs, compared
    /// with `desired` (or the one set for the device through the API).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sync_field: String,
    /// What `sync_field` should be for this class. Unset: only devices given one through the
    /// API are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<serde_json::Value>,
    /// How long `sync_field` may differ from the desired value before `device.out_of_sync`
    /// (an update in progress is not news).
    #[serde(default = "default_sync_grace", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub sync_grace: Duration,
    /// The actions devices of this class take (`show_message`, `identify`); none: no action
    /// is sent to them (a submitted one is `rejected`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Where an action is published (QoS 1) as `{"id","name","params","deadline"}`;
    /// `{device}` is the device id.
    #[serde(default = "default_action_topic")]
    pub action_topic: String,
    /// No answer this long after an action was sent makes it `timed_out`.
    #[serde(default = "default_action_timeout", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub action_timeout: Duration,
}

fn default_action_topic() -> String {
    "devices/{device}/actions".into()
}

fn default_action_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_sync_grace() -> Duration {
    Duration::from_secs(600)
}

fn default_lost_after() -> f64 {
    3.0
}

fn default_debounce() -> Duration {
    Duration::from_secs(5)
}

impl Default for DeviceClassConfig {
    /// The rules for devices no configured class matches.
    fn default() -> Self {
        DeviceClassConfig {
            name: "default".into(),
            matches: vec!["*".into()],
            heartbeat: None,
            lost_after: default_lost_after(),
            debounce: default_debounce(),
            stale_after: None,
            min_interval: Duration::ZERO,
            max_interval: None,
            version_field: String::new(),
            deadband: BTreeMap::new(),
            identity_fields: Vec::new(),
            forget_after: None,
            state_fields: Vec::new(),
            state_deadband: BTreeMap::new(),
            sync_field: String::new(),
            desired: None,
            sync_grace: default_sync_grace(),
            actions: Vec::new(),
            action_topic: default_action_topic(),
            action_timeout: default_action_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    pub id: String,
    /// Occupancy sensors bound to this workspace (device ids).
    pub sensors: Vec<String>,
    /// The reading field that says whether someone is present.
    #[serde(default = "default_presence_field")]
    pub presence_field: String,
    /// A room display whose bookings make a free workspace `Booked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// The display's reading field that says whether the workspace is booked now.
    #[serde(default = "default_booking_field")]
    pub booking_field: String,
    /// Occupied becomes Free (or Booked) only after every sensor has reported absence this long.
    #[serde(default = "default_hold", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub hold: Duration,
}

fn default_presence_field() -> String {
    "presence".into()
}

fn default_booking_field() -> String {
    "booked".into()
}

/// `[[groups]]`: sensors reported as one — a floor, a zone, or a workspace's sensors —
/// as `sensor.group.reading.updated`, `.stale` and `sensor.group.state.updated` (see
/// `device::group` for the rules).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub id: String,
    /// Member device ids or patterns (`occ-2*`).
    #[serde(default)]
    pub members: Vec<String>,
    /// A workspace whose sensors are members too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The reading field that says whether someone is present.
    #[serde(default = "default_presence_field")]
    pub presence_field: String,
    /// Per numeric reading field, how the members' values make the group's: `mean`, `min`,
    /// `max`, or `count` (members reporting it true).
    #[serde(default)]
    pub aggregates: BTreeMap<String, super::group::Aggregate>,
    /// The same for state fields (the lowest `battery`, a `tamper` `count`).
    #[serde(default)]
    pub state_aggregates: BTreeMap<String, super::group::Aggregate>,
    /// Per value (`occupancy`, `present`, `usable`, an aggregated field), the smallest move that
    /// counts as a change.
    #[serde(default)]
    pub deadband: BTreeMap<String, f64>,
    /// At most one `sensor.group.reading.updated` per interval (changes in between are sent
    /// with the latest values when it ends).
    #[serde(default, with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub min_interval: Duration,
    /// No member reading for this long makes `sensor.group.reading.stale`. Unset: never.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub stale_after: Option<Duration>,
}

/// `[devices]`: bounds on the device registry. A flood of made-up device ids or field names
/// (a misconfigured publisher, a hostile one on an open broker) is bad input: counted, logged
/// once a minute, acknowledged, and no event; the devices already known keep flowing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Devices remembered at most (each costs about 2 KB of memory and its state on disk);
    /// messages from further new devices are skipped.
    pub max_devices: usize,
    /// Field names one device's readings may use at most; a reading that would take a device
    /// past it is skipped.
    pub max_fields: usize,
    /// The values kept for one device, in bytes of JSON (names and values, the latest of each
    /// field): a reading that would take a device past it is skipped. With `max_devices`, it
    /// bounds the registry's memory and its state on disk whatever devices send.
    pub max_state_bytes: usize,
    /// Actions not yet done, per device and in all: past them a new one is refused (429).
    pub max_actions_per_device: usize,
    pub max_actions: usize,
    /// The deadline of an action submitted without one.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub action_deadline: Duration,
}

impl Default for DevicesConfig {
    fn default() -> DevicesConfig {
        DevicesConfig {
            max_devices: 5_000,
            max_fields: 64,
            max_state_bytes: 4096,
            max_actions_per_device: 16,
            max_actions: 1_000,
            action_deadline: Duration::from_secs(24 * 3600),
        }
    }
}

fn default_hold() -> Duration {
    Duration::from_secs(300)
}

/// The checks of `[[groups]]`: the key that is wrong and why.
pub fn validate_groups(
    groups: &[GroupConfig],
    workspaces: &[WorkspaceConfig],
) -> Result<(), (String, String)> {
    let bad = |key: String, msg: String| Err((key, msg));
    for (i, g) in groups.iter().enumerate() {
        let key = |k: &str| format!("groups[{i}].{k}");
        if g.id.trim().is_empty() {
            return bad(key("id"), "must not be empty".into());
        }
        if groups[..i].iter().any(|o| o.id == g.id) {
            return bad(key("id"), format!("duplicate group `{}`", g.id));
        }
        if g.members.iter().any(|m| m.is_empty()) {
            return bad(
                key("members"),
                "a member must be a device id or pattern".into(),
            );
        }
        match &g.workspace {
            Some(w) if !workspaces.iter().any(|ws| &ws.id == w) => {
                return bad(
                    key("workspace"),
                    format!("no workspace `{w}` is configured"),
                )
            }
            None if g.members.is_empty() => {
                return bad(
                    key("members"),
                    "list member ids or patterns (or name a workspace)".into(),
                )
            }
            _ => {}
        }
        if let Some((field, _)) = g
            .deadband
            .iter()
            .find(|(_, d)| !(d.is_finite() && **d >= 0.0))
        {
            return bad(
                key(&format!("deadband.{field}")),
                "must be a number of 0 or more".into(),
            );
        }
        if g.stale_after.is_some_and(|s| s.is_zero()) {
            return bad(key("stale_after"), "must be above 0 (or left out)".into());
        }
    }
    Ok(())
}

/// The device stage's checks: the key that is wrong and why.
pub fn validate(
    devices: &DevicesConfig,
    classes: &[DeviceClassConfig],
    workspaces: &[WorkspaceConfig],
) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    if devices.max_devices == 0 {
        return bad("devices.max_devices", "must be at least 1".into());
    }
    if devices.max_fields == 0 {
        return bad("devices.max_fields", "must be at least 1".into());
    }
    if devices.max_state_bytes < 256 {
        return bad("devices.max_state_bytes", "must be at least 256".into());
    }
    for (i, class) in classes.iter().enumerate() {
        let key = |k: &str| format!("device_classes[{i}].{k}");
        if class.name.trim().is_empty() {
            return bad(&key("name"), "must not be empty".into());
        }
        if classes[..i].iter().any(|c| c.name == class.name) {
            return bad(&key("name"), format!("duplicate class `{}`", class.name));
        }
        if class.matches.is_empty() || class.matches.iter().any(|m| m.is_empty()) {
            return bad(
                &key("match"),
                "must list device id patterns, e.g. [\"occ-*\"]".into(),
            );
        }
        if class.heartbeat.is_some_and(|h| h.is_zero()) {
            return bad(&key("heartbeat"), "must be above 0 (or left out)".into());
        }
        if !(class.lost_after >= 1.0 && class.lost_after <= 1000.0) {
            return bad(&key("lost_after"), "must be between 1 and 1000".into());
        }
        if class.stale_after.is_some_and(|s| s.is_zero()) {
            return bad(&key("stale_after"), "must be above 0 (or left out)".into());
        }
        if let Some(max) = class.max_interval {
            if max.is_zero() || max < class.min_interval {
                return bad(
                    &key("max_interval"),
                    "must be above 0 and at least min_interval".into(),
                );
            }
        }
        for (table, deadband) in [
            ("deadband", &class.deadband),
            ("state_deadband", &class.state_deadband),
        ] {
            if let Some((field, _)) = deadband
                .iter()
                .find(|(_, d)| !(d.is_finite() && **d >= 0.0))
            {
                return bad(
                    &key(&format!("{table}.{field}")),
                    "must be a number of 0 or more".into(),
                );
            }
        }
        if class.forget_after.is_some_and(|f| f.is_zero()) {
            return bad(&key("forget_after"), "must be above 0 (or left out)".into());
        }
        if let Some(field) = class
            .state_deadband
            .keys()
            .find(|f| !class.state_fields.contains(f))
        {
            return bad(
                &key(&format!("state_deadband.{field}")),
                format!("`{field}` is not one of state_fields"),
            );
        }
        for (name, field) in [
            ("version_field", &class.version_field),
            ("sync_field", &class.sync_field),
        ] {
            if class.state_fields.contains(field) {
                return bad(
                    &key(name),
                    format!(
                        "`{field}` is a state field: state fields are kept apart from readings"
                    ),
                );
            }
        }
        if !class.actions.is_empty() && !class.action_topic.contains("{device}") {
            return bad(
                &key("action_topic"),
                "must hold `{device}`, e.g. \"devices/{device}/actions\"".into(),
            );
        }
        if class.action_timeout.is_zero() {
            return bad(&key("action_timeout"), "must be above 0".into());
        }
        if class.desired.is_some() && class.sync_field.is_empty() {
            return bad(
                &key("desired"),
                "needs sync_field (the field to compare)".into(),
            );
        }
    }
    for (i, ws) in workspaces.iter().enumerate() {
        if ws.id.trim().is_empty() {
            return bad(&format!("workspaces[{i}].id"), "must not be empty".into());
        }
        if ws.sensors.is_empty() {
            return bad(
                &format!("workspaces[{i}].sensors"),
                "must list at least one occupancy sensor".into(),
            );
        }
        if ws.display.as_deref().is_some_and(|d| d.trim().is_empty()) {
            return bad(
                &format!("workspaces[{i}].display"),
                "must be a device id (or left out)".into(),
            );
        }
        if workspaces[..i].iter().any(|w| w.id == ws.id) {
            return bad(
                &format!("workspaces[{i}].id"),
                format!("duplicate workspace `{}`", ws.id),
            );
        }
    }
    Ok(())
}
