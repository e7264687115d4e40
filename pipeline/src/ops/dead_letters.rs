//! Dead letters: listed with their stage, reason, subject and position, their original decoded
//! where it decodes, and redriven to their original subject after a fix, each once.
//!
//! A redrive publishes the original bytes again on the subject they were consumed from, with
//! the message id `redrive/<dead-letter subject>/<partition>-<offset>` and the header
//! [`REDRIVE_OF`] naming the dead letter. Before publishing, the original subject is read from
//! the dead letter's time on for a message carrying that header: if one is there, the dead
//! letter was redriven already and is not published again. Two redrives racing each other are
//! caught by the broker's duplicate window on JetStream and the embedded bus (same message id);
//! on Kafka, which does not deduplicate, by the stages' idempotence (a payment is answered from
//! the ledger, never applied twice).

use dcpipe_connectors::bus::{
    Bus, Outgoing, Position, Record, ReplayFrom, dead_letter_subject, header,
};
use dcpipe_schemas::{CodecError, DeadLetter};

use super::follow::SubjectReader;
use super::records::Decoded;
use super::{OpsError, OpsErrorKind};

/// Header on a redriven message: the dead letter it came from,
/// `<dead-letter subject>/<partition>-<offset>`.
pub const REDRIVE_OF: &str = "dcpipe-redrive-of";

/// How long before the dead letter's bus time its redrive may be stored (broker clocks).
pub const REDRIVE_CLOCK_LEEWAY_MS: i64 = 10_000;

/// One dead letter as stored.
#[derive(Debug)]
pub struct DeadLetterEntry {
    /// The stored record on `deadletter.<stage>`.
    pub record: Record,
    /// The dead letter, or why its payload does not decode as one.
    pub letter: Result<DeadLetter, CodecError>,
    /// The payload and the original, decoded for display.
    pub decoded: Decoded,
}

impl DeadLetterEntry {
    /// `<dead-letter subject>/<partition>-<offset>`: names the dead letter, in redrive ids.
    pub fn name(&self) -> String {
        name_of(&self.record.subject, self.record.position)
    }

    /// The stage, from the dead letter (or the header when it does not decode).
    pub fn stage(&self) -> &str {
        match &self.letter {
            Ok(letter) => &letter.stage,
            Err(_) => header_value(&self.record, header::DEAD_LETTER_STAGE).unwrap_or(""),
        }
    }

    /// The reason code, from the dead letter (or the header).
    pub fn reason_code(&self) -> &str {
        match &self.letter {
            Ok(letter) => &letter.reason_code,
            Err(_) => header_value(&self.record, header::DEAD_LETTER_REASON).unwrap_or(""),
        }
    }
}

fn header_value<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `<subject>/<partition>-<offset>`.
pub fn name_of(subject: &str, position: Position) -> String {
    format!("{subject}/{}-{}", position.partition, position.offset)
}

/// Which dead letters a command is about.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stages whose dead-letter subjects are read (`deadletter.<stage>`).
    pub stages: Vec<String>,
    /// Only these reason codes (all when empty).
    pub reasons: Vec<String>,
    /// Only these positions `PARTITION-OFFSET` or `OFFSET` (all when empty).
    pub positions: Vec<Position>,
    /// Only dead letters whose original is about this payment.
    pub payment_id: Option<[u8; 16]>,
    /// From (inclusive).
    pub from: Option<ReplayFrom>,
    /// Until this bus time (exclusive).
    pub until_ms: Option<i64>,
}

impl Selection {
    fn keeps(&self, entry: &DeadLetterEntry) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|r| r == entry.reason_code()))
            && (self.positions.is_empty() || self.positions.contains(&entry.record.position))
            && self
                .payment_id
                .is_none_or(|id| entry.decoded.payment_id() == Some(id))
    }
}

/// Parses `PARTITION-OFFSET` or `OFFSET` (partition 0).
pub fn parse_position(text: &str) -> Result<Position, String> {
    let (partition, offset) = match text.split_once('-') {
        Some((p, o)) => (p, o),
        None => ("0", text),
    };
    match (partition.parse(), offset.parse()) {
        (Ok(partition), Ok(offset)) => Ok(Position { partition, offset }),
        _ => Err(format!(
            "{text:?}: expected OFFSET or PARTITION-OFFSET, e.g. 12 or 1-12"
        )),
    }
}

/// The dead letters of the selected stages, in order per stage.
pub async fn list(bus: &dyn Bus, selection: &Selection) -> Result<Vec<DeadLetterEntry>, OpsError> {
    let mut entries = Vec::new();
    for stage in &selection.stages {
        let mut reader = SubjectReader::new(
            dead_letter_subject(stage),
            selection.from.unwrap_or(ReplayFrom::Beginning),
            selection.until_ms,
        );
        for record in reader.poll(bus, usize::MAX).await? {
            let entry = DeadLetterEntry {
                letter: dcpipe_schemas::decode::<DeadLetter>(&record.payload),
                decoded: Decoded::of(&record.payload),
                record,
            };
            if selection.keeps(&entry) {
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

/// What a redrive did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// Published on its original subject at this position.
    Published {
        /// The original subject.
        subject: String,
        /// Where it was stored.
        position: Position,
        /// The bus recognized the message id as already stored (a racing redrive).
        duplicate: bool,
    },
    /// Redriven before: the copy found on the original subject.
    AlreadyRedriven {
        /// The original subject.
        subject: String,
        /// Where the earlier copy is.
        position: Position,
    },
    /// Not redriven, and why (the dead letter does not decode, or its original was cut).
    Refused(String),
}

/// The message id of the redrive of a dead letter.
pub fn redrive_msg_id(entry: &DeadLetterEntry) -> String {
    format!("redrive/{}", entry.name())
}

/// Redrives one dead letter, unless it was redriven already.
pub async fn redrive(bus: &dyn Bus, entry: &DeadLetterEntry) -> Result<Redrive, OpsError> {
    let letter = match &entry.letter {
        Ok(letter) => letter,
        Err(e) => return Ok(Redrive::Refused(format!("not a dead letter: {e}"))),
    };
    if usize::try_from(letter.original_size_bytes).unwrap_or(usize::MAX) > letter.original.len() {
        return Ok(Redrive::Refused(format!(
            "the original was cut to {} of its {} bytes",
            letter.original.len(),
            letter.original_size_bytes
        )));
    }
    if let Err(e) = dcpipe_connectors::bus::validate_subject(&letter.subject) {
        return Ok(Redrive::Refused(e.to_string()));
    }
    let name = entry.name();
    // Redriven before? Only a copy published after the dead letter can be one.
    let mut reader = SubjectReader::new(
        letter.subject.clone(),
        ReplayFrom::TimeMs(entry.record.timestamp_ms - REDRIVE_CLOCK_LEEWAY_MS),
        None,
    );
    loop {
        let records = reader.poll(bus, super::follow::READ_BATCH_MAX).await?;
        if records.is_empty() {
            break;
        }
        if let Some(copy) = records
            .iter()
            .find(|r| header_value(r, REDRIVE_OF) == Some(name.as_str()))
        {
            return Ok(Redrive::AlreadyRedriven {
                subject: letter.subject.clone(),
                position: copy.position,
            });
        }
    }
    // The original's ordering key is not kept in a dead letter: a redriven message goes to any
    // partition, which is harmless for a message its stage could not process in order anyway.
    let message = Outgoing::new(letter.subject.clone(), letter.original.clone())
        .with_msg_id(redrive_msg_id(entry))
        .with_header(REDRIVE_OF, name);
    let receipt = bus.publish(message).await.map_err(|e| {
        OpsError::with_source(
            OpsErrorKind::Bus,
            format!("redriving to {}", letter.subject),
            e,
        )
    })?;
    Ok(Redrive::Published {
        subject: letter.subject.clone(),
        position: receipt.position,
        duplicate: receipt.duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_with_or_without_a_partition() {
        assert_eq!(
            parse_position("12"),
            Ok(Position {
                partition: 0,
                offset: 12
            })
        );
        assert_eq!(
            parse_position("1-12"),
            Ok(Position {
                partition: 1,
                offset: 12
            })
        );
        assert!(parse_position("x").is_err());
        assert!(parse_position("1-").is_err());
    }
}
