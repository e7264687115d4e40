//! Checks a datum against the layout of its writer schema before the Avro library reads it.
//!
//! The Avro library allocates a buffer as long as a length prefix says before it reads the bytes,
//! and trusts block counts; a corrupted prefix could make it allocate hundreds of megabytes. This
//! walk reads only varints and skips over bytes, allocates nothing, and proves that every length
//! and count fits in what remains of the frame, that every union and enum index exists, that
//! strings are UTF-8 and that nothing follows the datum. After it, decoding allocates at most
//! about the size of the frame.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, UuidSchema};

use crate::error::{CodecError, CodecErrorKind};

/// Deepest nesting the walk follows; deeper data can only come from a recursive schema fed with
/// hostile bytes.
const DEPTH_MAX: usize = 64;

/// One node of a compiled schema; children are indices into [`Shape::nodes`].
#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    Enum(usize),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<usize>),
}

/// The layout of a schema, with named references resolved to node indices.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    nodes: Vec<Node>,
    root: usize,
}

impl Shape {
    /// Compiles `schema`; fails on a reference to a name the schema does not define.
    pub(crate) fn compile(schema: &Schema) -> Result<Self, String> {
        let mut compiler = Compiler {
            nodes: Vec::new(),
            names: HashMap::new(),
        };
        let root = compiler.node(schema)?;
        Ok(Self {
            nodes: compiler.nodes,
            root,
        })
    }

    /// Walks `datum` and fails on the first byte that cannot belong to a datum of this shape.
    pub(crate) fn check(&self, datum: &[u8]) -> Result<(), CodecError> {
        let mut walk = Walk {
            nodes: &self.nodes,
            bytes: datum,
            pos: 0,
            // Every array item and map entry of our schemas takes at least one byte, so a datum
            // cannot legitimately hold more items than bytes; this also bounds the walk's work.
            items_left: datum.len(),
        };
        walk.node(self.root, 0)?;
        if walk.pos == datum.len() {
            Ok(())
        } else {
            Err(CodecError::new(
                CodecErrorKind::TrailingBytes,
                format!(
                    "{} bytes after a {}-byte datum",
                    datum.len() - walk.pos,
                    walk.pos
                ),
            ))
        }
    }
}

struct Compiler {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, schema: &Schema) -> Result<usize, String> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(apache_avro::schema::DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Node::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Node::String,
            Schema::Decimal(apache_avro::schema::DecimalSchema {
                inner: InnerDecimalSchema::Fixed(fixed),
                ..
            })
            | Schema::Uuid(UuidSchema::Fixed(fixed))
            | Schema::Duration(fixed)
            | Schema::Fixed(fixed) => {
                let index = self.push(Node::Fixed(fixed.size));
                self.names.insert(fixed.name.fullname(None), index);
                return Ok(index);
            }
            Schema::Enum(schema) => {
                let index = self.push(Node::Enum(schema.symbols.len()));
                self.names.insert(schema.name.fullname(None), index);
                return Ok(index);
            }
            Schema::Array(array) => {
                let items = self.node(&array.items)?;
                Node::Array(items)
            }
            Schema::Map(map) => {
                let values = self.node(&map.types)?;
                Node::Map(values)
            }
            Schema::Union(union) => {
                let variants = union
                    .variants()
                    .iter()
                    .map(|v| self.node(v))
                    .collect::<Result<Vec<_>, _>>()?;
                Node::Union(variants)
            }
            Schema::Record(record) => {
                // Registered before its fields so that a field may refer to the record itself.
                let index = self.push(Node::Record(Vec::new()));
                self.names.insert(record.name.fullname(None), index);
                let fields = record
                    .fields
                    .iter()
                    .map(|f| self.node(&f.schema))
                    .collect::<Result<Vec<_>, _>>()?;
                self.nodes[index] = Node::Record(fields);
                return Ok(index);
            }
            Schema::Ref { name } => {
                let full = name.fullname(None);
                return self
                    .names
                    .get(&full)
                    .copied()
                    .ok_or_else(|| format!("reference to undefined type {full}"));
            }
        };
        Ok(self.push(node))
    }
}

struct Walk<'a> {
    nodes: &'a [Node],
    bytes: &'a [u8],
    pos: usize,
    items_left: usize,
}

impl Walk<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(&self, needed: impl std::fmt::Display) -> CodecError {
        CodecError::new(
            CodecErrorKind::Truncated,
            format!(
                "datum needs {needed} at byte {} but {} remain",
                self.pos,
                self.remaining()
            ),
        )
    }

    fn invalid(&self, problem: impl std::fmt::Display) -> CodecError {
        CodecError::new(
            CodecErrorKind::InvalidDatum,
            format!("{problem} at byte {}", self.pos),
        )
    }

    fn skip(&mut self, n: usize) -> Result<(), CodecError> {
        if n > self.remaining() {
            return Err(self.truncated(format_args!("{n} bytes")));
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint of at most 10 bytes, as Avro writes `long`.
    fn long(&mut self) -> Result<i64, CodecError> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(self.truncated("a varint byte"));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.invalid("varint overflows 64 bits"));
            }
            raw |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(self.invalid("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, CodecError> {
        let value = self.long()?;
        i32::try_from(value).map_err(|_| self.invalid("int out of 32-bit range"))
    }

    /// A length prefix: not negative and not beyond the end of the datum.
    fn length(&mut self) -> Result<usize, CodecError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| self.invalid("negative length"))?;
        if len > self.remaining() {
            return Err(self.truncated(format_args!("{len} bytes")));
        }
        Ok(len)
    }

    /// An index into `count` alternatives (union branch or enum symbol).
    fn index(&mut self, count: usize, what: &str) -> Result<usize, CodecError> {
        let index = self.int()?;
        usize::try_from(index)
            .ok()
            .filter(|i| *i < count)
            .ok_or_else(|| self.invalid(format_args!("{what} index {index} not in 0..{count}")))
    }

    /// The blocks of an array or map: a count (negative: followed by a byte size), items, and
    /// a zero count at the end.
    fn blocks(
        &mut self,
        depth: usize,
        item: impl Fn(&mut Self, usize) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.length()?;
            }
            let count = usize::try_from(count.unsigned_abs())
                .map_err(|_| self.invalid("block count out of range"))?;
            if count > self.items_left || count > self.remaining() {
                return Err(self.truncated(format_args!("{count} items")));
            }
            self.items_left -= count;
            for _ in 0..count {
                item(self, depth)?;
            }
        }
    }

    fn node(&mut self, index: usize, depth: usize) -> Result<(), CodecError> {
        if depth > DEPTH_MAX {
            return Err(self.invalid("nesting deeper than the walk allows"));
        }
        let nodes = self.nodes;
        match &nodes[index] {
            Node::Null => Ok(()),
            Node::Boolean => match self.bytes.get(self.pos) {
                Some(0 | 1) => self.skip(1),
                Some(other) => Err(self.invalid(format_args!("boolean byte {other}"))),
                None => Err(self.truncated("a boolean")),
            },
            Node::Int => self.int().map(drop),
            Node::Long => self.long().map(drop),
            Node::Float => self.skip(4),
            Node::Double => self.skip(8),
            Node::Bytes => {
                let len = self.length()?;
                self.skip(len)
            }
            Node::String => {
                let len = self.length()?;
                let text = &self.bytes[self.pos..self.pos + len];
                if std::str::from_utf8(text).is_err() {
                    return Err(self.invalid("string is not UTF-8"));
                }
                self.skip(len)
            }
            Node::Fixed(size) => self.skip(*size),
            Node::Enum(symbols) => self.index(*symbols, "enum").map(drop),
            Node::Array(items) => {
                let items = *items;
                self.blocks(depth, |walk, depth| walk.node(items, depth + 1))
            }
            Node::Map(values) => {
                let values = *values;
                self.blocks(depth, |walk, depth| {
                    let len = walk.length()?;
                    let key = &walk.bytes[walk.pos..walk.pos + len];
                    if std::str::from_utf8(key).is_err() {
                        return Err(walk.invalid("map key is not UTF-8"));
                    }
                    walk.skip(len)?;
                    walk.node(values, depth + 1)
                })
            }
            Node::Union(variants) => {
                let branch = self.index(variants.len(), "union")?;
                self.node(variants[branch], depth + 1)
            }
            Node::Record(fields) => {
                for &field in fields {
                    self.node(field, depth + 1)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(avsc: &str) -> Shape {
        let schema = Schema::parse_str(avsc).expect("test schema parses");
        Shape::compile(&schema).expect("test schema compiles")
    }

    fn kind(result: Result<(), CodecError>) -> Option<CodecErrorKind> {
        result.err().map(|e| e.kind())
    }

    #[test]
    fn accepts_exact_bytes_datum() {
        // "abc" as Avro bytes: length 3 (zig-zag 6), then the bytes.
        assert_eq!(
            kind(shape(r#""bytes""#).check(&[6, b'a', b'b', b'c'])),
            None
        );
    }

    #[test]
    fn rejects_length_prefix_beyond_the_datum() {
        // Length 2^62 with two bytes behind it: must fail without allocating.
        let datum = [
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0, 0,
        ];
        assert_eq!(
            kind(shape(r#""bytes""#).check(&datum)),
            Some(CodecErrorKind::Truncated)
        );
    }

    #[test]
    fn rejects_negative_length() {
        assert_eq!(
            kind(shape(r#""string""#).check(&[1])),
            Some(CodecErrorKind::InvalidDatum)
        );
    }

    #[test]
    fn rejects_union_index_out_of_range() {
        assert_eq!(
            kind(shape(r#"["null","long"]"#).check(&[4, 0])),
            Some(CodecErrorKind::InvalidDatum)
        );
    }

    #[test]
    fn rejects_block_count_beyond_the_datum() {
        // An array claiming 1,000,000 longs in a 5-byte datum.
        let datum = [0x80, 0x89, 0x7a, 0, 0];
        assert_eq!(
            kind(shape(r#"{"type":"array","items":"long"}"#).check(&datum)),
            Some(CodecErrorKind::Truncated)
        );
    }

    #[test]
    fn accepts_negative_block_count_with_size() {
        // One block of -2 items (zig-zag 3), 2 bytes long (zig-zag 4): longs 1 and 2, then end.
        let datum = [3, 4, 2, 4, 0];
        assert_eq!(
            kind(shape(r#"{"type":"array","items":"long"}"#).check(&datum)),
            None
        );
    }

    #[test]
    fn rejects_varint_longer_than_ten_bytes() {
        let datum = [0xff; 11];
        assert_eq!(
            kind(shape(r#""long""#).check(&datum)),
            Some(CodecErrorKind::InvalidDatum)
        );
    }

    #[test]
    fn rejects_int_out_of_32_bit_range() {
        // zig-zag of 2^31 = 2^32: 0x80 0x80 0x80 0x80 0x10.
        let datum = [0x80, 0x80, 0x80, 0x80, 0x10];
        assert_eq!(
            kind(shape(r#""int""#).check(&datum)),
            Some(CodecErrorKind::InvalidDatum)
        );
    }

    #[test]
    fn rejects_invalid_utf8_string() {
        assert_eq!(
            kind(shape(r#""string""#).check(&[4, 0xc3, 0x28])),
            Some(CodecErrorKind::InvalidDatum)
        );
    }

    #[test]
    fn rejects_bytes_after_the_datum() {
        assert_eq!(
            kind(shape(r#""long""#).check(&[2, 0])),
            Some(CodecErrorKind::TrailingBytes)
        );
    }

    #[test]
    fn follows_named_references() {
        let avsc = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":{"type":"fixed","name":"F","size":2}},
            {"name":"b","type":"F"}]}"#;
        assert_eq!(kind(shape(avsc).check(&[1, 2, 3, 4])), None);
        assert_eq!(
            kind(shape(avsc).check(&[1, 2, 3])),
            Some(CodecErrorKind::Truncated)
        );
    }
}
