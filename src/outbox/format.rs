//! The outbox's byte formats: queue records, dead letters, tree names and `meta` keys.
//! (The layout they make up is described at the top of the outbox module.)

use super::config::DEFAULT_ENDPOINT;
use super::OutboxError;
use crate::event::Envelope;

pub(super) const RECORD_VERSION: u8 = 1;

/// The queue tree of `endpoint`.
pub(super) fn tree_name(endpoint: &str) -> String {
    if endpoint == DEFAULT_ENDPOINT {
        "outbox".into()
    } else {
        format!("outbox.{endpoint}")
    }
}

/// The endpoint whose queue `tree` is, if it is one.
pub(super) fn endpoint_of_tree(tree: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(tree).ok()?;
    match name {
        "outbox" => Some(DEFAULT_ENDPOINT.into()),
        _ => name.strip_prefix("outbox.").map(str::to_owned),
    }
}

/// A dead letter's key: the sequence number, then the endpoint (nothing for `default`).
pub(super) fn dead_key(seq: u64, endpoint: &str) -> Vec<u8> {
    let mut key = seq.to_be_bytes().to_vec();
    if endpoint != DEFAULT_ENDPOINT {
        key.extend_from_slice(endpoint.as_bytes());
    }
    key
}

/// A dead letter: the record as it was queued, for which endpoint, and why it was given up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub endpoint: String,
    pub record: OutboxRecord,
    pub info: DeadInfo,
    /// Its record is damaged ([`is_damaged`]): it cannot be sent, nor queued again.
    pub damaged: bool,
}

/// One stored event awaiting delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub lane: String,
    pub body: Vec<u8>,
}

/// The `meta` key of `fact` about `endpoint`: `endpoint.<fact>` for `default` (as before there
/// were several endpoints), `endpoint.<name>.<fact>` for the others.
pub fn meta_key(endpoint: &str, fact: &str) -> String {
    if endpoint == DEFAULT_ENDPOINT {
        format!("endpoint.{fact}")
    } else {
        format!("endpoint.{endpoint}.{fact}")
    }
}

/// The `meta` fact counting the events an endpoint will never get because its share of the
/// outbox was full: new events while it could not drain, or its oldest readings deleted by
/// `on_full = drop_oldest_readings` (see [`run_writer`]).
pub const DROPPED: &str = "dropped";

/// Why delivery gave up on an event; kept with it in the `dead` tree.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadInfo {
    /// Failed attempts (since the daemon last started).
    pub attempts: u32,
    /// The last HTTP status, if the receiver answered at all.
    pub last_status: Option<u16>,
    pub last_error: String,
    /// When it was given up on, Unix milliseconds.
    pub dead_at: u64,
    /// Which limit: `max_attempts` or `max_age`; or [`DAMAGED`].
    pub reason: String,
}

/// The `reason` of a dead letter set aside because its record could not be read back whole
/// (its body's segment missing, short, or not matching its checksum): never sent, never
/// queued again.
pub const DAMAGED: &str = "damaged";

/// Whether a dead letter's record bytes are a damaged record set aside ([`DAMAGED`]): a
/// pointer (a whole record is put in a letter otherwise) or no record at all.
pub(super) fn is_damaged(record: &[u8]) -> bool {
    pointed(record).is_some() || decode(0, record).is_err()
}

/// The record bytes inside a dead-letter value.
pub(super) fn dead_record_bytes(value: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(value.get(1..5)?.try_into().ok()?) as usize;
    value.get(5 + len..)
}

pub(super) fn decode_dead(key: &[u8], value: &[u8]) -> Result<DeadLetter, OutboxError> {
    let seq = seq_of(key.get(..8).unwrap_or(key))?;
    let endpoint = match &key[8..] {
        [] => DEFAULT_ENDPOINT.to_string(),
        name => String::from_utf8_lossy(name).into_owned(),
    };
    let corrupt = |why| OutboxError::Corrupt { seq, why };
    if value.first() != Some(&RECORD_VERSION) {
        return Err(corrupt("unknown dead-letter version"));
    }
    let len = u32::from_be_bytes(
        value
            .get(1..5)
            .ok_or(corrupt("truncated"))?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let info = value.get(5..5 + len).ok_or(corrupt("truncated"))?;
    let info: DeadInfo =
        serde_json::from_slice(info).map_err(|_| corrupt("dead-letter info is not JSON"))?;
    let bytes = dead_record_bytes(value).ok_or(corrupt("truncated"))?;
    // Set aside as damaged, a letter holds a pointer (its header whole, its body not readable)
    // or bytes that are no record: listed with what can be read of them.
    let record = match pointed(bytes) {
        Some(_) => decode(seq, &resolved(bytes, &[])),
        None => decode(seq, bytes),
    }
    .unwrap_or_else(|_| OutboxRecord {
        seq,
        id: String::new(),
        kind: String::new(),
        lane: String::new(),
        body: Vec::new(),
    });
    Ok(DeadLetter {
        endpoint,
        record,
        info,
        damaged: is_damaged(bytes),
    })
}

/// JSON-encode states for writing; a later state of the same key replaces an earlier one.
pub(super) fn encode_states<'a, T: serde::Serialize + 'a>(
    states: impl Iterator<Item = &'a (String, T)>,
) -> Vec<(&'a str, Vec<u8>)> {
    states
        .map(|(id, s)| {
            (
                id.as_str(),
                serde_json::to_vec(s).expect("plain state serialises"),
            )
        })
        .collect()
}

pub(super) fn load_states<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
) -> Result<Vec<(String, T)>, OutboxError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            load_state(&k, &v, what)
        })
        .collect()
}

/// One persisted state, its key as text.
pub(super) fn load_state<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
    what: &'static str,
) -> Result<(String, T), OutboxError> {
    let key = String::from_utf8_lossy(key).into_owned();
    let state = serde_json::from_slice(value).map_err(|e| OutboxError::CorruptState {
        tree: what,
        key: key.clone(),
        why: e.to_string(),
    })?;
    Ok((key, state))
}

pub(super) fn seq_of(key: &[u8]) -> Result<u64, OutboxError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| OutboxError::Corrupt {
            seq: 0,
            why: "key is not 8 bytes",
        })
}

pub(super) fn encode(env: &Envelope) -> Vec<u8> {
    let kind = env.kind.as_str().as_bytes();
    let mut out =
        Vec::with_capacity(4 + kind.len() + env.lane.len() + env.id.len() + env.body.len());
    out.push(RECORD_VERSION);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    let lane = env.lane.as_bytes();
    let lane_len = lane.len().min(u16::MAX as usize);
    out.extend_from_slice(&(lane_len as u16).to_be_bytes());
    out.extend_from_slice(&lane[..lane_len]);
    out.push(env.id.len() as u8);
    out.extend_from_slice(env.id.as_bytes());
    out.extend_from_slice(&env.body);
    out
}

/// A queue value whose body is in a segment file (`bodies`): `[version=3]`, the record's
/// header as in version 1 (type, lane, id), then where the body is: segment (u64), offset
/// (u32), length (u32), then the body's CRC-32 (u32), big-endian. Version 2, which earlier
/// versions wrote, is the same without the CRC, and is still read.
pub(super) const POINTER_VERSION: u8 = 3;
const POINTER_V2: u8 = 2;

/// The bytes after a pointer's header: 20 for version 3, 16 for version 2; None for a record
/// with its body inline.
fn pointer_tail(value: &[u8]) -> Option<usize> {
    match *value.first()? {
        POINTER_VERSION => Some(20),
        POINTER_V2 => Some(16),
        _ => None,
    }
}

/// The length of a version-1 record's header (version byte included): where its body starts.
pub(super) fn header_len(record: &[u8]) -> Option<usize> {
    let kind = 2 + *record.get(1)? as usize;
    let lane = kind + 2 + u16::from_be_bytes(record.get(kind..kind + 2)?.try_into().ok()?) as usize;
    let id = lane + 1 + *record.get(lane)? as usize;
    (id <= record.len()).then_some(id)
}

/// `record` (version 1) as a pointer to its body at `at`; None if it is not a whole record.
pub(super) fn pointer(record: &[u8], at: super::bodies::BodyAt) -> Option<Vec<u8>> {
    let header = header_len(record)?;
    let mut out = Vec::with_capacity(header + 20);
    out.push(if at.crc.is_some() {
        POINTER_VERSION
    } else {
        POINTER_V2
    });
    out.extend_from_slice(&record[1..header]);
    out.extend_from_slice(&at.segment.to_be_bytes());
    out.extend_from_slice(&at.offset.to_be_bytes());
    out.extend_from_slice(&at.len.to_be_bytes());
    if let Some(crc) = at.crc {
        out.extend_from_slice(&crc.to_be_bytes());
    }
    Some(out)
}

/// Where the body of a pointer value is; None for a record with its body inline.
pub(super) fn pointed(value: &[u8]) -> Option<super::bodies::BodyAt> {
    let tail = value.get(value.len().checked_sub(pointer_tail(value)?)?..)?;
    Some(super::bodies::BodyAt {
        segment: u64::from_be_bytes(tail[..8].try_into().ok()?),
        offset: u32::from_be_bytes(tail[8..12].try_into().ok()?),
        len: u32::from_be_bytes(tail[12..16].try_into().ok()?),
        crc: match tail.get(16..20) {
            Some(crc) => Some(u32::from_be_bytes(crc.try_into().ok()?)),
            None => None,
        },
    })
}

/// The record (version 1) a pointer value stands for, given its body (empty: its header
/// alone). `value` must be a pointer ([`pointed`]).
pub(super) fn resolved(value: &[u8], body: &[u8]) -> Vec<u8> {
    let tail = pointer_tail(value).unwrap_or(0);
    let header = value
        .get(1..value.len().saturating_sub(tail))
        .unwrap_or(&[]);
    let mut out = Vec::with_capacity(1 + header.len() + body.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

/// The bytes of the record a queue value holds or points to (what the queues' byte counts
/// and shares count).
pub(super) fn record_size(value: &[u8]) -> usize {
    match (pointed(value), pointer_tail(value)) {
        (Some(at), Some(tail)) => value.len() - tail + at.len as usize,
        _ => value.len(),
    }
}

/// The event type of an encoded record (or pointer), without decoding the rest.
pub(super) fn record_kind(bytes: &[u8]) -> Option<&[u8]> {
    let len = *bytes.get(1)? as usize;
    bytes.get(2..2 + len)
}

/// The lane of an encoded record, without decoding the rest.
pub(super) fn record_lane(bytes: &[u8]) -> Option<&[u8]> {
    let at = 2 + *bytes.get(1)? as usize;
    let len = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
    bytes.get(at + 2..at + 2 + len)
}

pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<OutboxRecord, OutboxError> {
    let corrupt = |why| OutboxError::Corrupt { seq, why };
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], OutboxError> {
        if rest.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    if take(1)?[0] != RECORD_VERSION {
        return Err(corrupt("unknown record version"));
    }
    let kind_len = take(1)?[0] as usize;
    let kind = std::str::from_utf8(take(kind_len)?)
        .map_err(|_| corrupt("type is not UTF-8"))?
        .to_string();
    let lane_len = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
    let lane = std::str::from_utf8(take(lane_len)?)
        .map_err(|_| corrupt("lane is not UTF-8"))?
        .to_string();
    let id_len = take(1)?[0] as usize;
    let id = std::str::from_utf8(take(id_len)?)
        .map_err(|_| corrupt("id is not UTF-8"))?
        .to_string();
    Ok(OutboxRecord {
        seq,
        id,
        kind,
        lane,
        body: rest.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventType};

    /// A record and its pointer: the same type, lane and size; the record back from the
    /// pointer and its body, whatever the lane's and id's lengths.
    #[test]
    fn a_pointer_keeps_the_records_header_and_gives_it_back_whole() {
        for device in ["d", "a-much-longer-device-name-of-a-room-display", ""] {
            let mut fields = serde_json::Map::new();
            fields.insert("t".into(), 21.into());
            let event = Event::device(EventType::SensorReadingUpdated, device, fields);
            let record = encode(&Envelope::seal(&event, "gw", std::time::SystemTime::now()));
            let header = header_len(&record).unwrap();
            let body = &record[header..];
            let at = super::super::bodies::BodyAt {
                segment: 7,
                offset: 123_456,
                len: body.len() as u32,
                crc: Some(crc32fast::hash(body)),
            };
            let p = pointer(&record, at).unwrap();
            assert_eq!(pointed(&p), Some(at), "{device:?}");
            // An earlier version's pointer, without the CRC, is read the same.
            let old = super::super::bodies::BodyAt { crc: None, ..at };
            let p2 = pointer(&record, old).unwrap();
            assert_eq!((p2[0], p2.len() + 4), (2, p.len()));
            assert_eq!(pointed(&p2), Some(old));
            assert_eq!(resolved(&p2, body), record);
            assert_eq!(record_size(&p2), record.len());
            assert_eq!(pointed(&record), None);
            assert_eq!(record_kind(&p), record_kind(&record));
            assert_eq!(record_lane(&p), record_lane(&record));
            assert_eq!(record_size(&p), record.len());
            assert_eq!(record_size(&record), record.len());
            assert_eq!(resolved(&p, body), record);
        }
        assert_eq!(header_len(&[1, 3, b'a']), None, "truncated");
    }
}
