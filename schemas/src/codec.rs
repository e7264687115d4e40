//! The frame codec: Confluent wire format around an Avro binary datum.
//!
//! ```text
//! byte 0      magic byte, always 0
//! bytes 1..5  schema id, big-endian u32 (see SCHEMA_TABLE)
//! bytes 5..   Avro binary datum written with that schema
//! ```
//!
//! Decoding checks, in this order: the size limit, the header, the schema id (known, and a
//! version of the message asked for), the datum's structure (see the `prescan` module), the
//! datum itself, and the contract rules of the message. Data written with the message's current
//! schema is read straight into the Rust type; data written with another version of the message
//! is resolved writer-to-reader first.

use apache_avro::Schema;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    error::{CodecError, CodecErrorKind},
    limits::FRAME_BYTES_MAX,
    registry,
};

/// The first byte of every frame (Confluent wire format).
pub const MAGIC_BYTE: u8 = 0;

/// Length of the frame header: the magic byte and the 4-byte schema id.
pub const HEADER_BYTES: usize = 5;

pub(crate) mod sealed {
    /// Only the messages of this crate have schemas in the table.
    pub trait Sealed {}
}

/// A message of the contract: a Rust type with a schema in the table.
///
/// Implemented by the message types of this crate only; use [`encode`] and [`decode`] to turn
/// them into frames and back.
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// The message name, equal to the Avro record name (e.g. `TransactionEnvelope`).
    const NAME: &'static str;

    /// The schema id this crate writes the message with: its current version.
    const SCHEMA_ID: u32;

    /// Largest frame of this message accepted by [`decode`] and produced by [`encode`].
    const FRAME_BYTES_MAX: usize = FRAME_BYTES_MAX;

    /// The parsed schema of the current version ([`SCHEMA_ID`](Self::SCHEMA_ID)).
    ///
    /// # Panics
    ///
    /// Never for the messages of this crate: their schemas are compiled in, and a test parses
    /// every schema and checks every message's id against the table.
    fn schema() -> &'static Schema {
        match registry::compiled(Self::SCHEMA_ID) {
            Some(compiled) => compiled.schema,
            // Unreachable: a test checks every message's SCHEMA_ID against the table.
            None => panic!(
                "{} has no schema {} in the table",
                Self::NAME,
                Self::SCHEMA_ID
            ),
        }
    }

    /// Checks the contract rules of the message: limits, signs, formats and cross-field rules.
    ///
    /// [`encode`] and [`decode`] call it.
    ///
    /// # Errors
    ///
    /// [`InvalidField`](CodecErrorKind::InvalidField), naming the first field that breaks a rule.
    fn validate(&self) -> Result<(), CodecError>;
}

/// Encodes `message` as a new frame.
///
/// # Errors
///
/// [`InvalidField`](CodecErrorKind::InvalidField) when the message breaks a contract rule,
/// [`TooLarge`](CodecErrorKind::TooLarge) when the frame would exceed the message's limit.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, CodecError> {
    let mut frame = Vec::with_capacity(512);
    encode_into(message, &mut frame)?;
    Ok(frame)
}

/// Appends the frame of `message` to `out`, so that a producer can reuse one buffer.
///
/// # Errors
///
/// As [`encode`]; on error `out` is left as it was.
pub fn encode_into<M: Message>(message: &M, out: &mut Vec<u8>) -> Result<(), CodecError> {
    message.validate()?;
    let compiled = current(M::NAME, M::SCHEMA_ID)?;
    let start = out.len();
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&M::SCHEMA_ID.to_be_bytes());
    let written = compiled.writer.write_ser(out, message);
    let frame_len = out.len() - start;
    match written {
        Ok(_) if frame_len <= M::FRAME_BYTES_MAX => Ok(()),
        Ok(_) => {
            out.truncate(start);
            Err(CodecError::new(
                CodecErrorKind::TooLarge,
                format!(
                    "{} frame of {frame_len} bytes exceeds {} bytes",
                    M::NAME,
                    M::FRAME_BYTES_MAX
                ),
            ))
        }
        Err(error) => {
            out.truncate(start);
            Err(CodecError::new(
                CodecErrorKind::EncodeFailed,
                format!("{}: {error}", M::NAME),
            ))
        }
    }
}

/// Decodes a frame holding any known version of message `M`.
///
/// Never panics: every malformed frame is a [`CodecError`].
///
/// # Errors
///
/// One kind per way a frame can be wrong, checked in this order:
/// [`TooLarge`](CodecErrorKind::TooLarge), [`Truncated`](CodecErrorKind::Truncated) and
/// [`BadMagic`](CodecErrorKind::BadMagic) for the header,
/// [`UnknownSchemaId`](CodecErrorKind::UnknownSchemaId) and
/// [`WrongMessage`](CodecErrorKind::WrongMessage) for the id,
/// [`Truncated`](CodecErrorKind::Truncated), [`InvalidDatum`](CodecErrorKind::InvalidDatum) and
/// [`TrailingBytes`](CodecErrorKind::TrailingBytes) for the datum, and
/// [`InvalidField`](CodecErrorKind::InvalidField) for the contract rules.
pub fn decode<M: Message>(frame: &[u8]) -> Result<M, CodecError> {
    if frame.len() > M::FRAME_BYTES_MAX {
        return Err(CodecError::new(
            CodecErrorKind::TooLarge,
            format!(
                "frame of {} bytes exceeds {} bytes for {}",
                frame.len(),
                M::FRAME_BYTES_MAX,
                M::NAME
            ),
        ));
    }
    let writer_id = schema_id(frame)?;
    let compiled = registry::compiled(writer_id).ok_or_else(|| unknown_id(writer_id))?;
    if compiled.entry.message != M::NAME {
        return Err(CodecError::new(
            CodecErrorKind::WrongMessage,
            format!(
                "schema {writer_id} is {} v{}, expected {}",
                compiled.entry.message,
                compiled.entry.version,
                M::NAME
            ),
        ));
    }
    let mut datum = &frame[HEADER_BYTES..];
    compiled.shape.check(datum)?;
    let message: M = if writer_id == M::SCHEMA_ID {
        compiled
            .reader
            .read_deser(&mut datum)
            .map_err(invalid_datum)?
    } else {
        let resolver = registry::resolver(writer_id, M::SCHEMA_ID).ok_or_else(|| {
            CodecError::new(
                CodecErrorKind::WrongMessage,
                format!(
                    "no reader from schema {writer_id} to schema {} of {}",
                    M::SCHEMA_ID,
                    M::NAME
                ),
            )
        })?;
        let value = resolver.read_value(&mut datum).map_err(invalid_datum)?;
        apache_avro::from_value(&value).map_err(invalid_datum)?
    };
    if !datum.is_empty() {
        // The prescan already proved the datum's length; this guards the Avro reader's side.
        return Err(CodecError::new(
            CodecErrorKind::TrailingBytes,
            format!("{} bytes left unread", datum.len()),
        ));
    }
    message.validate()?;
    Ok(message)
}

/// Reads the schema id of a frame without decoding it, e.g. to route or to name a dead letter.
///
/// Checks the header only; the id may still be unknown.
///
/// # Errors
///
/// [`Truncated`](CodecErrorKind::Truncated) for a frame shorter than [`HEADER_BYTES`],
/// [`BadMagic`](CodecErrorKind::BadMagic) when byte 0 is not [`MAGIC_BYTE`].
pub fn schema_id(frame: &[u8]) -> Result<u32, CodecError> {
    let Some((&magic, rest)) = frame.split_first() else {
        return Err(CodecError::new(CodecErrorKind::Truncated, "empty frame"));
    };
    if magic != MAGIC_BYTE {
        return Err(CodecError::new(
            CodecErrorKind::BadMagic,
            format!("first byte is {magic:#04x}, expected {MAGIC_BYTE:#04x}"),
        ));
    }
    match rest.first_chunk::<4>() {
        Some(id) => Ok(u32::from_be_bytes(*id)),
        None => Err(CodecError::new(
            CodecErrorKind::Truncated,
            format!(
                "frame of {} bytes is shorter than the {HEADER_BYTES}-byte header",
                frame.len()
            ),
        )),
    }
}

fn current(name: &str, id: u32) -> Result<&'static registry::Compiled, CodecError> {
    registry::compiled(id).ok_or_else(|| {
        CodecError::new(
            CodecErrorKind::EncodeFailed,
            format!("{name} has no schema {id} in the table"),
        )
    })
}

fn unknown_id(id: u32) -> CodecError {
    CodecError::new(
        CodecErrorKind::UnknownSchemaId,
        format!("schema id {id} is not in the table"),
    )
}

fn invalid_datum(error: apache_avro::Error) -> CodecError {
    CodecError::new(CodecErrorKind::InvalidDatum, error.to_string())
}
