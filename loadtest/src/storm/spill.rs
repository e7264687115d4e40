//! The storm's key sets made before it starts and kept on disk, chunk after chunk, so that the
//! storm measures the platform alone (making a wallet — its certificate, its payments signed
//! and checked by their payees' wallets — costs about half of what the platform does for it)
//! and memory stays bounded whatever N: the file is read back a few chunks ahead of the sender.
//!
//! The format is private to one run (an anonymous temporary file, gone when the run ends):
//! per chunk its interbank and received counts and its reconnections, each field
//! length-prefixed, integers little-endian.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use bytes::Bytes;
use dcpipe_schemas::PaymentId;

use super::generate::{Chunk, Reconnection};
use crate::error::{LoadTestError, LoadTestErrorKind};

/// Longest field read back: a key set with twenty payments made and twenty received is about
/// 20 KB; anything far beyond is a damaged file.
const FIELD_BYTES_MAX: u64 = 1 << 20;

fn spill_error(what: &str, error: impl std::fmt::Display) -> LoadTestError {
    LoadTestError::new(
        LoadTestErrorKind::Generate,
        format!("the storm's key sets on disk: {what}: {error}"),
    )
}

/// Writes chunks in order.
#[derive(Debug)]
pub struct ChunkWriter {
    out: BufWriter<File>,
    chunks: usize,
}

impl ChunkWriter {
    /// A writer on a new anonymous temporary file.
    pub fn new() -> Result<Self, LoadTestError> {
        let file = tempfile::tempfile().map_err(|e| spill_error("creating the file", e))?;
        Ok(ChunkWriter {
            out: BufWriter::new(file),
            chunks: 0,
        })
    }

    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &Chunk) -> Result<(), LoadTestError> {
        let mut put = |bytes: &[u8]| {
            self.out
                .write_all(bytes)
                .map_err(|e| spill_error("writing", e))
        };
        put(&(chunk.interbank as u64).to_le_bytes())?;
        put(&(chunk.received as u64).to_le_bytes())?;
        put(&(chunk.reconnections.len() as u64).to_le_bytes())?;
        for r in &chunk.reconnections {
            put(&(r.index as u64).to_le_bytes())?;
            for field in [r.subject.as_bytes(), r.wallet_id.as_bytes(), &r.frame] {
                put(&(field.len() as u64).to_le_bytes())?;
                put(field)?;
            }
            put(&(r.payments.len() as u64).to_le_bytes())?;
            for payment in &r.payments {
                put(payment.as_bytes())?;
            }
            put(&r.purse_after_fen.to_le_bytes())?;
        }
        self.chunks += 1;
        Ok(())
    }

    /// Chunks written.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The reader of what was written, from its first chunk.
    pub fn into_reader(self) -> Result<ChunkReader, LoadTestError> {
        let chunks = self.chunks;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| spill_error("flushing", e.error()))?;
        std::io::Seek::rewind(&mut file).map_err(|e| spill_error("rewinding", e))?;
        Ok(ChunkReader {
            input: BufReader::new(file),
            left: chunks,
        })
    }
}

/// Reads chunks back in the order they were written.
#[derive(Debug)]
pub struct ChunkReader {
    input: BufReader<File>,
    left: usize,
}

impl ChunkReader {
    /// The next chunk, `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, LoadTestError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let interbank = self.count()?;
        let received = self.count()?;
        let reconnections = self.count()?;
        let mut chunk = Chunk {
            reconnections: Vec::with_capacity(reconnections.min(1 << 16)),
            interbank,
            received,
        };
        for _ in 0..reconnections {
            let index = self.count()?;
            let subject = self.text()?;
            let wallet_id = self.text()?;
            let frame = Bytes::from(self.field()?);
            let payments = (0..self.count()?)
                .map(|_| {
                    let mut id = [0u8; 16];
                    self.exact(&mut id).map(|()| PaymentId::from_bytes(id))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let purse_after_fen = i64::from_le_bytes(self.word()?);
            chunk.reconnections.push(Reconnection {
                index,
                subject,
                wallet_id,
                frame,
                payments,
                purse_after_fen,
            });
        }
        Ok(Some(chunk))
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), LoadTestError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => spill_error("reading", "the file ends inside a chunk"),
            _ => spill_error("reading", e),
        })
    }

    fn word(&mut self) -> Result<[u8; 8], LoadTestError> {
        let mut word = [0u8; 8];
        self.exact(&mut word)?;
        Ok(word)
    }

    fn count(&mut self) -> Result<usize, LoadTestError> {
        let n = u64::from_le_bytes(self.word()?);
        usize::try_from(n).map_err(|_| spill_error("reading", format!("a count of {n}")))
    }

    fn field(&mut self) -> Result<Vec<u8>, LoadTestError> {
        let len = u64::from_le_bytes(self.word()?);
        if len > FIELD_BYTES_MAX {
            return Err(spill_error("reading", format!("a field of {len} bytes")));
        }
        let mut bytes = vec![0u8; len as usize];
        self.exact(&mut bytes)?;
        Ok(bytes)
    }

    fn text(&mut self) -> Result<String, LoadTestError> {
        String::from_utf8(self.field()?).map_err(|e| spill_error("reading", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconnection(index: usize, payments: usize) -> Reconnection {
        Reconnection {
            index,
            subject: format!("wallet.keyset.oi0{}", index % 4 + 1),
            wallet_id: format!("s-oi01-{index:07}"),
            frame: Bytes::from(vec![index as u8; 300 + index]),
            payments: (0..payments)
                .map(|p| PaymentId::from_bytes([(index + p) as u8; 16]))
                .collect(),
            purse_after_fen: 100_000 - index as i64 * 7,
        }
    }

    fn same(a: &Chunk, b: &Chunk) {
        assert_eq!((a.interbank, a.received), (b.interbank, b.received));
        assert_eq!(a.reconnections.len(), b.reconnections.len());
        for (x, y) in a.reconnections.iter().zip(&b.reconnections) {
            assert_eq!(x.index, y.index);
            assert_eq!(x.subject, y.subject);
            assert_eq!(x.wallet_id, y.wallet_id);
            assert_eq!(x.frame, y.frame);
            assert_eq!(x.payments, y.payments);
            assert_eq!(x.purse_after_fen, y.purse_after_fen);
        }
    }

    #[test]
    fn chunks_come_back_in_order_and_whole() {
        let chunks = vec![
            Chunk {
                reconnections: vec![reconnection(0, 3), reconnection(1, 0)],
                interbank: 2,
                received: 1,
            },
            Chunk::default(),
            Chunk {
                reconnections: vec![reconnection(2, 20)],
                interbank: 20,
                received: 19,
            },
        ];
        let mut writer = ChunkWriter::new().expect("writer");
        for chunk in &chunks {
            writer.write(chunk).expect("write");
        }
        assert_eq!(writer.chunks(), 3);
        let mut reader = writer.into_reader().expect("reader");
        for chunk in &chunks {
            same(chunk, &reader.next_chunk().expect("read").expect("a chunk"));
        }
        assert!(reader.next_chunk().expect("read").is_none());
    }

    #[test]
    fn a_file_that_ends_inside_a_chunk_is_an_error() {
        let mut writer = ChunkWriter::new().expect("writer");
        writer
            .write(&Chunk {
                reconnections: vec![reconnection(5, 2)],
                interbank: 1,
                received: 0,
            })
            .expect("write");
        let mut reader = writer.into_reader().expect("reader");
        reader.left = 2;
        assert!(reader.next_chunk().expect("the first").is_some());
        let e = reader.next_chunk().expect_err("nothing more");
        assert!(e.to_string().contains("ends inside a chunk"), "{e}");
    }
}
