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

/// `meta` keys `applied.0` … `applied.3`: the fingerprints (8 bytes each) of the transport
/// messages applied in each of the last batches, written with the batch, so that a restart
/// recognises their redeliveries (`source::redelivery`).
pub(super) const APPLIED: &str = "applied";
pub(super) const APPLIED_BATCHES: u64 = 4;

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
    /// Which limit: `max_attempts` or `max_age`.
    pub reason: String,
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
    let record = decode(seq, dead_record_bytes(value).ok_or(corrupt("truncated"))?)?;
    Ok(DeadLetter {
        endpoint,
        record,
        info,
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
            let key = String::from_utf8_lossy(&k).into_owned();
            let state = serde_json::from_slice(&v).map_err(|e| OutboxError::CorruptState {
                tree: what,
                key: key.clone(),
                why: e.to_string(),
            })?;
            Ok((key, state))
        })
        .collect()
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

/// The event type of an encoded record, without decoding the rest.
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
