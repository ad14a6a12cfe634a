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
        use std::ops::Bound;
        self.with(|s| {
            let after: &[u8] = match selection {
                crate::device::Selection::One(_) => &[],
                crate::device::Selection::Page { after, .. } => {
                    after.as_deref().unwrap_or_default().as_bytes()
                }
            };
            // The devices changed since the checkpoint, after `after`: a new state, or gone.
            let newer: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = s
                .hot()
                .states
                .get("devices")
                .map(|held| {
                    held.iter()
                        .filter(|(k, _)| match selection {
                            crate::device::Selection::One(id) => k.as_slice() == id.as_bytes(),
                            crate::device::Selection::Page { after: None, .. } => true,
                            crate::device::Selection::Page { .. } => k.as_slice() > after,
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            if let crate::device::Selection::One(id) = selection {
                let value = match newer.get(id.as_bytes()) {
                    Some(held) => held.clone(),
                    None => s.devices.get(id.as_bytes())?.map(|v| v.to_vec()),
                };
                return Ok((
                    match value {
                        Some(v) => vec![format::load_state(id.as_bytes(), &v, "device")?],
                        None => Vec::new(),
                    },
                    false,
                ));
            }
            let crate::device::Selection::Page { after, limit } = selection else {
                unreachable!("One answered above")
            };
            let from = match after {
                Some(a) => Bound::Excluded(a.as_bytes()),
                None => Bound::Unbounded,
            };
            // sled's and the newer ones merged in key order, the newer winning.
            let mut stored = s
                .devices
                .range::<&[u8], _>((from, Bound::Unbounded))
                .peekable();
            let mut held = newer.into_iter().peekable();
            let mut page = Vec::new();
            let mut bytes = 0usize;
            loop {
                let next_stored = match stored.peek() {
                    Some(Ok((k, _))) => Some(k.to_vec()),
                    Some(Err(_)) => {
                        stored.next().transpose()?;
                        continue;
                    }
                    None => None,
                };
                let (key, value) = match (next_stored, held.peek()) {
                    (None, None) => break,
                    (Some(k), Some((h, _))) if h <= &k => {
                        if *h == k {
                            stored.next();
                        }
                        let (h, v) = held.next().expect("peeked");
                        (h, v)
                    }
                    (Some(_), _) => {
                        let (k, v) = stored.next().expect("peeked")?;
                        (k.to_vec(), Some(v.to_vec()))
                    }
                    (None, Some(_)) => held.next().expect("peeked"),
                };
                let Some(value) = value else { continue }; // forgotten since the checkpoint
                bytes += key.len() + value.len() + crate::device::VIEW_BYTES;
                if page.len() == *limit || (!page.is_empty() && bytes > crate::device::PAGE_BYTES) {
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
