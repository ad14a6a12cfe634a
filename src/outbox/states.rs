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
    /// page, however many devices there are.
    #[allow(clippy::type_complexity)]
    pub fn devices_page(
        &self,
        selection: &crate::device::Selection,
    ) -> Result<(Vec<(String, DeviceState)>, bool), OutboxError> {
        use std::ops::Bound;
        self.with(|s| match selection {
            crate::device::Selection::One(id) => Ok((
                match s.devices.get(id.as_bytes())? {
                    Some(v) => vec![format::load_state(id.as_bytes(), &v, "device")?],
                    None => Vec::new(),
                },
                false,
            )),
            crate::device::Selection::Page { after, limit } => {
                let from = match after {
                    Some(a) => Bound::Excluded(a.as_bytes()),
                    None => Bound::Unbounded,
                };
                let mut page = Vec::new();
                let mut bytes = 0usize;
                for kv in s.devices.range::<&[u8], _>((from, Bound::Unbounded)) {
                    let (k, v) = kv?;
                    bytes += k.len() + v.len() + crate::device::VIEW_BYTES;
                    if page.len() == *limit
                        || (!page.is_empty() && bytes > crate::device::PAGE_BYTES)
                    {
                        return Ok((page, true));
                    }
                    page.push(format::load_state(&k, &v, "device")?);
                }
                Ok((page, false))
            }
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
