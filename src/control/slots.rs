//! Who gets a listener's connection slots (pure): no client, local or on the network, can hold
//! them all and lock the others out (#43.8: 32 idle keep-alive connections, each sending one
//! request every 3 s, left `/healthz`, the API and `POST /v1/commands` unanswered).
//!
//! A connection is *busy* while a request of its is being answered, *idle* otherwise (between
//! requests, or before its first headers); it is *proven* once a request of its carried
//! credentials that were accepted (the API's token, a valid upstream signature). A new
//! connection is always let in when there is room; when there is none, an idle connection
//! makes room for it — the peer's own first, past its share ([`Limits::per_peer`]); otherwise
//! an unproven one before a proven one, the one idle longest first. A busy connection is never
//! closed (what it is answering is bounded by the listener's timeouts). HTTP lets a server close
//! an idle keep-alive connection at any time; clients open another.

use std::net::IpAddr;
use std::time::Instant;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub total: usize,
    /// Connections of one peer address at once.
    pub per_peer: usize,
}

/// What the rule needs to know of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    pub peer: IpAddr,
    pub busy: bool,
    pub proven: bool,
    /// When it last started or finished a request (or was accepted).
    pub since: Instant,
}

/// What to do with a new connection from `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Close this idle connection, then let the new one in.
    Evict(u64),
    /// No room and nothing to close: the new connection waits for a slot.
    Wait,
}

pub fn admit(slots: &[Slot], peer: IpAddr, limits: Limits) -> Admit {
    let idle_first = |candidates: &mut dyn Iterator<Item = &Slot>| {
        candidates
            .filter(|s| !s.busy)
            .min_by_key(|s| (s.proven, s.since, s.id))
            .map(|s| s.id)
    };
    let mine = slots.iter().filter(|s| s.peer == peer).count();
    if mine >= limits.per_peer {
        return match idle_first(&mut slots.iter().filter(|s| s.peer == peer)) {
            Some(id) => Admit::Evict(id),
            None => Admit::Wait,
        };
    }
    if slots.len() >= limits.total {
        return match idle_first(&mut slots.iter()) {
            Some(id) => Admit::Evict(id),
            None => Admit::Wait,
        };
    }
    Admit::Yes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admission_as_a_table() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let slot = |id, peer, busy, proven, since| Slot {
            id,
            peer,
            busy,
            proven,
            since: at(since),
        };
        let limits = Limits {
            total: 3,
            per_peer: 2,
        };
        #[rustfmt::skip]
        let rows: Vec<(&str, Vec<Slot>, IpAddr, Admit)> = vec![
            ("room: in", vec![slot(1, a, false, false, 0)], b, Admit::Yes),
            ("full: the idle unproven one longest idle goes",
                vec![slot(1, a, false, true, 0), slot(2, b, false, false, 5), slot(3, b, false, false, 9)], b, Admit::Evict(2)),
            ("full: unproven before proven, however long idle",
                vec![slot(1, a, false, true, 0), slot(2, b, false, false, 9), slot(3, a, true, false, 1)], c, Admit::Evict(2)),
            ("full of busy ones: wait",
                vec![slot(1, a, true, false, 0), slot(2, b, true, false, 0), slot(3, b, true, true, 0)], b, Admit::Wait),
            ("a peer past its share makes room from its own",
                vec![slot(1, a, false, false, 0), slot(2, b, false, false, 1), slot(3, b, false, false, 2)], b, Admit::Evict(2)),
            ("a peer past its share, all busy: it waits, the others are untouched",
                vec![slot(1, a, false, false, 0), slot(2, b, true, false, 1), slot(3, b, true, false, 2)], b, Admit::Wait),
            ("a flood of one peer never takes another's place",
                vec![slot(1, b, false, false, 0), slot(2, b, false, false, 1)], a, Admit::Yes),
        ];
        for (what, slots, peer, want) in rows {
            assert_eq!(admit(&slots, peer, limits), want, "{what}");
        }
    }
}
