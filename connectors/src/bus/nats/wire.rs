//! How an [`Outgoing`] travels as a JetStream message and comes back as a [`Record`]: names of
//! streams and durable consumers, and the headers that carry what NATS has no field for.
//!
//! NATS headers are text and the client keeps them in a map, so dcpipe adds a few headers of
//! its own: the key (hex, since keys are bytes), the order of the user's headers (a map forgets
//! it) and the message id (also sent as `Nats-Msg-Id`, which the server uses for dedup).

use async_nats::HeaderMap;
use async_nats::datetime::DateTime;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use bytes::Bytes;

use crate::bus::{BusError, BusErrorKind, Headers, Outgoing, Position, Record, header};

/// Header carrying the ordering key, hex-encoded.
pub(super) const KEY_HEADER: &str = "dcpipe-key";
/// Header listing the names of the user's headers in publish order, separated by spaces.
pub(super) const HEADER_ORDER_HEADER: &str = "dcpipe-header-order";
/// Prefix of the headers the NATS server interprets (`Nats-Msg-Id`, `Nats-Expected-…`).
const BROKER_HEADER_PREFIX: &str = "nats-";
/// Longest durable consumer name we derive (the server accepts 255 characters).
const DURABLE_NAME_CHARS_MAX: usize = 200;

/// Checks that every bus can carry `headers` unchanged: names of printable ASCII without `:`,
/// values without CR or LF, and no name that a broker or dcpipe itself interprets. NATS is the
/// strictest carrier, so the Kafka bus applies the same rule and a worker behaves the same on
/// every bus.
pub(crate) fn check_portable_headers(headers: &Headers) -> Result<(), BusError> {
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':') {
            return Err(invalid_header(format!(
                "header name {name:?} must be printable ASCII without ':'"
            )));
        }
        if lower.starts_with(BROKER_HEADER_PREFIX)
            || lower == header::MSG_ID
            || lower == KEY_HEADER
            || lower == HEADER_ORDER_HEADER
        {
            return Err(invalid_header(format!(
                "header name {name:?} is reserved for the bus"
            )));
        }
        if value.contains(['\r', '\n']) {
            return Err(invalid_header(format!(
                "value of header {name:?} must not contain CR or LF"
            )));
        }
    }
    Ok(())
}

fn invalid_header(message: String) -> BusError {
    BusError::new(BusErrorKind::InvalidHeader, message)
}

/// The NATS headers of a message: the user's headers (checked by [`check_portable_headers`]
/// first), the key, the header order and the dedup id `nats_msg_id`.
pub(super) fn encode_headers(message: &Outgoing, nats_msg_id: &str) -> Result<HeaderMap, BusError> {
    check_portable_headers(&message.headers)?;
    let mut map = HeaderMap::new();
    for (name, value) in &message.headers {
        map.append(parse_name(name)?, parse_value(value)?);
    }
    if message.headers.len() > 1 {
        let order: Vec<&str> = message.headers.iter().map(|(n, _)| n.as_str()).collect();
        map.insert(HEADER_ORDER_HEADER, parse_value(&order.join(" "))?);
    }
    if let Some(key) = &message.key {
        map.insert(KEY_HEADER, parse_value(&hex::encode(key))?);
    }
    if let Some(msg_id) = &message.msg_id {
        map.insert(header::MSG_ID, parse_value(msg_id)?);
    }
    map.insert(NATS_MESSAGE_ID, parse_value(nats_msg_id)?);
    Ok(map)
}

fn parse_name(name: &str) -> Result<HeaderName, BusError> {
    name.parse()
        .map_err(|_| invalid_header(format!("header name {name:?} is not valid on NATS")))
}

fn parse_value(value: &str) -> Result<HeaderValue, BusError> {
    value
        .parse()
        .map_err(|_| invalid_header(format!("header value {value:?} is not valid on NATS")))
}

/// Checks a message id before it becomes a header value.
pub(super) fn check_msg_id(msg_id: &str) -> Result<(), BusError> {
    if msg_id.is_empty() || msg_id.contains(['\r', '\n']) {
        return Err(invalid_header(format!(
            "msg_id {msg_id:?} must be non-empty without CR or LF"
        )));
    }
    Ok(())
}

/// What a stored message looks like to dcpipe.
pub(super) struct Decoded {
    pub(super) key: Option<Bytes>,
    pub(super) msg_id: Option<String>,
    pub(super) headers: Headers,
}

/// Splits the NATS headers of a stored message into the key, the message id and the user's
/// headers in publish order. Headers written by other tools come back sorted by name; a key
/// that is not hex (not written by dcpipe) is ignored rather than failing the delivery.
pub(super) fn decode_headers(map: Option<&HeaderMap>) -> Decoded {
    let mut decoded = Decoded {
        key: None,
        msg_id: None,
        headers: Vec::new(),
    };
    let Some(map) = map else {
        return decoded;
    };
    let mut user: Vec<(String, Vec<String>)> = Vec::new();
    let mut order: Option<String> = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        let last = values.last().map(|v| v.as_str().to_owned());
        let lower = name.to_ascii_lowercase();
        if lower == KEY_HEADER {
            decoded.key = last.and_then(|v| hex::decode(v).ok()).map(Bytes::from);
        } else if lower == header::MSG_ID {
            decoded.msg_id = last;
        } else if lower == HEADER_ORDER_HEADER {
            order = last;
        } else if !lower.starts_with(BROKER_HEADER_PREFIX) {
            user.push((
                name.to_owned(),
                values.iter().map(|v| v.as_str().to_owned()).collect(),
            ));
        }
    }
    user.sort_by(|a, b| a.0.cmp(&b.0));
    decoded.headers = match order.and_then(|order| in_publish_order(&order, &user)) {
        Some(headers) => headers,
        None => user
            .into_iter()
            .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
            .collect(),
    };
    decoded
}

/// Rebuilds the publish order from the order header; `None` when the header does not match
/// the headers present (then the caller falls back to name order).
fn in_publish_order(order: &str, user: &[(String, Vec<String>)]) -> Option<Headers> {
    let mut next_value = vec![0usize; user.len()];
    let mut headers = Vec::new();
    for name in order.split(' ') {
        let slot = user.iter().position(|(n, _)| n == name)?;
        let value = user[slot].1.get(next_value[slot])?;
        next_value[slot] += 1;
        headers.push((name.to_owned(), value.clone()));
    }
    let all_used = user
        .iter()
        .zip(&next_value)
        .all(|((_, values), used)| values.len() == *used);
    all_used.then_some(headers)
}

/// Builds the record of a stored message.
pub(super) fn record(
    subject: &str,
    payload: Bytes,
    headers: Option<&HeaderMap>,
    stream_sequence: u64,
    timestamp_ms: i64,
) -> Record {
    let decoded = decode_headers(headers);
    Record {
        subject: subject.to_owned(),
        payload,
        key: decoded.key,
        msg_id: decoded.msg_id,
        headers: decoded.headers,
        position: Position {
            partition: 0,
            offset: stream_sequence,
        },
        timestamp_ms,
    }
}

/// Milliseconds since the epoch of a server timestamp, floored so that a message stored
/// during millisecond `t` reads as `t`, as the server compares start times.
pub(super) fn timestamp_ms(time: &DateTime) -> i64 {
    let nanos = time.unix_timestamp_nanos();
    i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// The server time of `ms` since the epoch, for a replay's start.
pub(super) fn datetime_of_ms(ms: i64) -> Result<DateTime, BusError> {
    async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000).map_err(|e| {
        BusError::new(
            BusErrorKind::Replay,
            format!("replay start {ms} ms is out of range: {e}"),
        )
    })
}

/// The stream holding a subject family: upper-cased, `-` replaced by `_`.
pub(super) fn stream_name(family: &str) -> String {
    family.to_ascii_uppercase().replace('-', "_")
}

/// The durable consumer shared by the members of `group` on `subject`: readable parts
/// (characters outside `[A-Za-z0-9_-]` become `_`) plus a stable hash of the exact pair, so
/// that two pairs that read alike never share a consumer.
pub(super) fn durable_name(group: &str, subject: &str) -> String {
    let readable = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(DURABLE_NAME_CHARS_MAX / 2 - 10)
            .collect()
    };
    let mut exact = Vec::with_capacity(group.len() + subject.len() + 1);
    exact.extend_from_slice(group.as_bytes());
    exact.push(0);
    exact.extend_from_slice(subject.as_bytes());
    format!(
        "{}-{}-{:016x}",
        readable(group),
        readable(subject),
        fnv1a_64(&exact)
    )
}

/// FNV-1a, 64 bits: tiny and stable across Rust versions (names must survive upgrades).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing_with_headers(headers: &[(&str, &str)]) -> Outgoing {
        let mut message = Outgoing::new("txn.submit.oi01", "payload");
        for (name, value) in headers {
            message = message.with_header(*name, *value);
        }
        message
    }

    #[test]
    fn headers_come_back_in_publish_order_with_repeated_names() {
        let message = outgoing_with_headers(&[("z", "1"), ("a", "2"), ("z", "3")])
            .with_key(vec![0u8, 255])
            .with_msg_id("m-1");
        let map = encode_headers(&message, "m-1").expect("valid headers");
        let decoded = decode_headers(Some(&map));
        assert_eq!(
            decoded.headers,
            vec![
                ("z".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
                ("z".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(decoded.key.as_deref(), Some(&[0u8, 255][..]));
        assert_eq!(decoded.msg_id.as_deref(), Some("m-1"));
    }

    #[test]
    fn generated_dedup_id_is_not_reported_as_msg_id() {
        let map = encode_headers(&outgoing_with_headers(&[]), "generated").expect("valid");
        let decoded = decode_headers(Some(&map));
        assert_eq!(decoded.msg_id, None);
        assert!(decoded.headers.is_empty(), "{:?}", decoded.headers);
    }

    #[test]
    fn rejects_header_value_with_newline() {
        let err = check_portable_headers(&vec![("a".into(), "x\r\ny".into())]).unwrap_err();
        assert_eq!(err.kind(), BusErrorKind::InvalidHeader);
    }

    #[test]
    fn rejects_header_name_with_colon_or_space() {
        for name in ["a:b", "a b", ""] {
            let err = check_portable_headers(&vec![(name.into(), "v".into())]).unwrap_err();
            assert_eq!(err.kind(), BusErrorKind::InvalidHeader, "{name:?}");
        }
    }

    #[test]
    fn rejects_broker_and_bus_reserved_header_names() {
        for name in [
            "Nats-Expected-Stream",
            "nats-msg-id",
            "dcpipe-msg-id",
            "dcpipe-key",
        ] {
            let err = check_portable_headers(&vec![(name.into(), "v".into())]).unwrap_err();
            assert_eq!(err.kind(), BusErrorKind::InvalidHeader, "{name:?}");
        }
    }

    #[test]
    fn foreign_headers_without_order_come_back_sorted_by_name() {
        let mut map = HeaderMap::new();
        map.insert("b", "2");
        map.insert("a", "1");
        map.insert("Nats-Msg-Id", "x");
        let decoded = decode_headers(Some(&map));
        assert_eq!(
            decoded.headers,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
    }

    #[test]
    fn stream_name_is_upper_cased_family() {
        assert_eq!(stream_name("txn"), "TXN");
        assert_eq!(stream_name("dead-letter"), "DEAD_LETTER");
    }

    #[test]
    fn durable_names_differ_for_pairs_that_read_alike() {
        let a = durable_name("payer", "txn.submit");
        let b = durable_name("payer", "txn_submit");
        assert_ne!(a, b);
        assert!(a.starts_with("payer-txn_submit-"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
    }

    #[test]
    fn durable_name_is_bounded_for_long_inputs() {
        let long = "g".repeat(1000);
        assert!(durable_name(&long, &long).len() <= DURABLE_NAME_CHARS_MAX);
    }
}
