//! What could not be processed: kept with its original bytes, stage and reason, never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{
        DEAD_LETTER_FRAME_BYTES_MAX, DEAD_LETTER_ORIGINAL_BYTES_MAX, DETAIL_BYTES_MAX,
        HEADER_BYTES_MAX, HEADERS_MAX, SUBJECT_BYTES_MAX,
    },
};

/// A message that could not be processed (schema id 15).
///
/// Its frame may be up to [`DEAD_LETTER_FRAME_BYTES_MAX`], larger than other messages, so that
/// any frame within [`FRAME_BYTES_MAX`](crate::FRAME_BYTES_MAX) fits whole in `original`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original bytes as received, cut to [`DEAD_LETTER_ORIGINAL_BYTES_MAX`]
    /// (see [`DeadLetter::truncate_to_limits`]).
    #[serde(with = "apache_avro::serde::bytes")]
    pub original: Vec<u8>,
    /// Length of the original before any cut.
    pub original_size_bytes: i64,
    /// Subject or topic the original arrived on.
    pub subject: String,
    /// Pipeline stage that gave up, e.g. `payer` or `settlement`.
    pub stage: String,
    /// Stable reason code, e.g. `schema.bad_magic`.
    pub reason_code: String,
    /// Human-readable explanation (at most [`DETAIL_BYTES_MAX`] bytes); never holds secrets.
    pub detail: String,
    /// How many times the bus had delivered the original.
    pub delivery_count: i32,
    /// Kafka partition of the original; 0 on buses without partitions.
    pub partition: i32,
    /// Kafka offset or JetStream stream sequence of the original; 0 when the bus has none.
    pub offset: i64,
    /// When the stage received the original (Unix epoch milliseconds).
    pub received_at_ms: i64,
    /// Bus headers of the original (at most [`HEADERS_MAX`]).
    pub headers: BTreeMap<String, String>,
}

impl DeadLetter {
    /// Cuts what came from outside (original, subject, detail, headers) to the limits, so that
    /// a dead letter can always be encoded, whatever the rejected input was.
    ///
    /// `original_size_bytes` becomes at least the length of `original` before the cut; the
    /// first [`HEADERS_MAX`] headers in name order are kept and empty names dropped.
    pub fn truncate_to_limits(&mut self) {
        let len = i64::try_from(self.original.len()).unwrap_or(i64::MAX);
        self.original_size_bytes = self.original_size_bytes.max(len);
        self.original.truncate(DEAD_LETTER_ORIGINAL_BYTES_MAX);
        cut(&mut self.subject, SUBJECT_BYTES_MAX);
        cut(&mut self.detail, DETAIL_BYTES_MAX);
        if self.headers.len() > HEADERS_MAX
            || self.headers.iter().any(|(k, v)| {
                k.is_empty() || k.len() > HEADER_BYTES_MAX || v.len() > HEADER_BYTES_MAX
            })
        {
            let headers = std::mem::take(&mut self.headers);
            for (mut name, mut value) in headers {
                if self.headers.len() == HEADERS_MAX {
                    break;
                }
                cut(&mut name, HEADER_BYTES_MAX);
                cut(&mut value, HEADER_BYTES_MAX);
                if !name.is_empty() {
                    self.headers.entry(name).or_insert(value);
                }
            }
        }
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl Sealed for DeadLetter {}

impl Message for DeadLetter {
    const NAME: &'static str = "DeadLetter";
    const SCHEMA_ID: u32 = 15;
    const FRAME_BYTES_MAX: usize = DEAD_LETTER_FRAME_BYTES_MAX;

    fn validate(&self) -> Result<(), CodecError> {
        check::count(
            "original",
            self.original.len(),
            0,
            DEAD_LETTER_ORIGINAL_BYTES_MAX,
        )?;
        let kept = i64::try_from(self.original.len()).unwrap_or(i64::MAX);
        if self.original_size_bytes < kept {
            return Err(CodecError::invalid_field(
                "original_size_bytes",
                "smaller than the bytes kept in original",
            ));
        }
        check::non_empty_text("subject", &self.subject, SUBJECT_BYTES_MAX)?;
        check::id("stage", &self.stage)?;
        check::reason_code("reason_code", &self.reason_code)?;
        check::text("detail", &self.detail, DETAIL_BYTES_MAX)?;
        check::range("delivery_count", self.delivery_count, 0, i32::MAX)?;
        check::range("partition", self.partition, 0, i32::MAX)?;
        check::non_negative("offset", self.offset)?;
        check::non_negative("received_at_ms", self.received_at_ms)?;
        check::count("headers", self.headers.len(), 0, HEADERS_MAX)?;
        for (name, value) in &self.headers {
            if name.is_empty() || name.len() > HEADER_BYTES_MAX || value.len() > HEADER_BYTES_MAX {
                return Err(CodecError::invalid_field(
                    "headers",
                    format_args!(
                        "a header name must be 1 to {HEADER_BYTES_MAX} bytes and its value at most {HEADER_BYTES_MAX}"
                    ),
                ));
            }
        }
        Ok(())
    }
}
