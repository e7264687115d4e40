//! How an [`Outgoing`] travels as a Kafka record and comes back as a [`Record`]: the key is the
//! record key, the message id travels in the `dcpipe-msg-id` header next to the user's headers,
//! in order.

use bytes::Bytes;
use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};

use crate::bus::{Headers, Outgoing, Position, Record, header};

/// The record headers of a message: the user's headers in order, then the message id.
pub(super) fn encode_headers(message: &Outgoing) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1);
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    if let Some(msg_id) = &message.msg_id {
        headers = headers.insert(Header {
            key: header::MSG_ID,
            value: Some(msg_id.as_bytes()),
        });
    }
    headers
}

/// The record of a consumed message. Header values that are not UTF-8 (not written by
/// dcpipe) are decoded lossily; a header without a value reads as empty.
pub(super) fn record(message: &BorrowedMessage<'_>) -> Record {
    let mut msg_id = None;
    let mut headers: Headers = Vec::new();
    if let Some(kafka_headers) = message.headers() {
        for index in 0..kafka_headers.count() {
            let Some(kafka_header) = kafka_headers.try_get(index) else {
                continue;
            };
            let value = kafka_header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if kafka_header.key == header::MSG_ID {
                msg_id = Some(value);
            } else {
                headers.push((kafka_header.key.to_owned(), value));
            }
        }
    }
    Record {
        subject: message.topic().to_owned(),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        key: message.key().map(Bytes::copy_from_slice),
        msg_id,
        headers,
        position: position(message.partition(), message.offset()),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
    }
}

/// A Kafka partition and offset as a [`Position`] (both are never negative on a stored record).
pub(super) fn position(partition: i32, offset: i64) -> Position {
    Position {
        partition: u32::try_from(partition).unwrap_or(0),
        offset: u64::try_from(offset).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_id_follows_user_headers_in_order() {
        let message = Outgoing::new("txn.submit", "p")
            .with_header("b", "2")
            .with_header("a", "1")
            .with_msg_id("m-1");
        let headers = encode_headers(&message);
        let names: Vec<&str> = (0..headers.count()).map(|i| headers.get(i).key).collect();
        assert_eq!(names, vec!["b", "a", header::MSG_ID]);
        assert_eq!(headers.get(2).value, Some(&b"m-1"[..]));
    }

    #[test]
    fn negative_offsets_never_wrap() {
        assert_eq!(
            position(-1, -1001),
            Position {
                partition: 0,
                offset: 0
            }
        );
        assert_eq!(
            position(3, 42),
            Position {
                partition: 3,
                offset: 42
            }
        );
    }
}
