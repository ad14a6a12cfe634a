//! The states persisted beside the events (devices, workspaces, groups, actions, bookings),
//! read at start, and a page of devices for the API.

use super::*;

impl Outbox {
    /// The fingerprints of the messages applied in the last batches before this start (at
    /// least the last `applied::KEPT` messages).
    pub fn applied_before(&self) -> Vec<u64> {
        let read = |s: &Store| {
            let mut all = Vec::new();
            for (_, fingerprints) in applied::stored(&s.meta)? {
                all.extend(
                    fingerprints
                        .chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))),
                );
            }
            Ok(all)
        };
        self.with(read).unwrap_or_default()
    }

    /// Every persisted device state (read once at start).
    pub fn devices(&self) -> Result<Vec<(String, DeviceState)>, OutboxError> {
        self.with(|s| load_states(&s.devices, "device"))
    }

    /// The persisted devices `selection` takes, by id, a page within
    /// [`crate::device::PAGE_BYTES`] of stored state; and whether more follow. Reads only the
    /// page, however many devices there are; what was written since the last checkpoint (held
    /// in memory, see `hot`) counts over what sled has.
    #[allow(clippy::type_complexity)]
    pub fn devices_page(
        &self,
        selection: &crate::device::Selection,
    ) -> Result<(Vec<(String, DeviceState)>, bool), OutboxError> {
        use crate::device::Selection;
        use std::ops::Bound;
        self.with(|s| {
            // The devices changed since the checkpoint: a new state, or gone.
            let held = |keep: &dyn Fn(&[u8]) -> bool| -> std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> {
                s.hot()
                    .states
                    .get("devices")
                    .map(|held| {
                        held.iter()
                            .filter(|(k, _)| keep(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (after, limit) = match selection {
                Selection::One(id) => {
                    let value = match held(&|k| k == id.as_bytes()).remove(id.as_bytes()) {
                        Some(newer) => newer,
                        None => s.devices.get(id.as_bytes())?.map(|v| v.to_vec()),
                    };
                    let one = match value {
                        Some(v) => vec![format::load_state(id.as_bytes(), &v, "device")?],
                        None => Vec::new(),
                    };
                    return Ok((one, false));
                }
                Selection::Page { after, limit } => (after.as_deref().map(str::as_bytes), *limit),
            };
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            let newer = held(&|k| after.is_none_or(|a| k > a));
            // sled's and the newer ones merged in key order, the newer winning.
            let mut stored = s.devices.range::<&[u8], _>((from, Bound::Unbounded)).peekable();
            let mut newer = newer.into_iter().peekable();
            let mut page = Vec::new();
            let mut fill = crate::device::PageFill::default();
            loop {
                let next_stored = match stored.peek() {
                    Some(Ok((k, _))) => Some(k.to_vec()),
                    Some(Err(_)) => {
                        stored.next().transpose()?;
                        continue;
                    }
                    None => None,
                };
                let (key, value) = match (next_stored, newer.peek()) {
                    (None, None) => break,
                    (Some(k), Some((h, _))) if h <= &k => {
                        if *h == k {
                            stored.next();
                        }
                        newer.next().expect("peeked")
                    }
                    (Some(_), _) => {
                        let (k, v) = stored.next().expect("peeked")?;
                        (k.to_vec(), Some(v.to_vec()))
                    }
                    (None, Some(_)) => newer.next().expect("peeked"),
                };
                let Some(value) = value else { continue }; // forgotten since the checkpoint
                if page.len() == limit || !fill.admits(key.len() + value.len()) {
                    return Ok((page, true));
                }
                page.push(format::load_state(&key, &value, "device")?);
            }
            Ok((page, false))
        })
    }

    /// Every persisted workspace state (read once at start).
    pub fn workspaces(&self) -> Result<Vec<(String, WorkspaceState)>, OutboxError> {
        self.with(|s| load_states(&s.workspaces, "workspace"))
    }

    /// Every persisted action (read once at start).
    pub fn actions(&self) -> Result<Vec<crate::device::action::Action>, OutboxError> {
        self.with(|s| load_states(&s.actions, "action"))
            .map(|all| all.into_iter().map(|(_, a)| a).collect())
    }

    /// Every persisted booking (read once at start).
    pub fn bookings(&self) -> Result<Vec<crate::device::booking::Booking>, OutboxError> {
        self.with(|s| load_states(&s.bookings, "booking"))
            .map(|all| all.into_iter().map(|(_, b)| b).collect())
    }

    /// Every persisted group state (read once at start).
    pub fn groups(&self) -> Result<Vec<(String, crate::device::group::GroupState)>, OutboxError> {
        self.with(|s| load_states(&s.groups, "group"))
    }
}
