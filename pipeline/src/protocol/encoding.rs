//! The signing encoding: a domain tag followed by typed fields, each with one unambiguous byte
//! form (docs/PROTOCOL.md, "Signing encoding").

#[cfg(debug_assertions)]
use super::layout::Cursor;
use super::layout::{SigningLayout, Step};

/// Longest domain tag, in bytes.
pub const TAG_BYTES_MAX: usize = 64;

/// Builds the exact bytes a signature or the transaction factor covers.
///
/// - tag: u16 big-endian length, then its ASCII bytes;
/// - fixed-size values (ids, digests, nonces): their bytes as they are;
/// - integers: big-endian two's complement (i32: 4 bytes, i64: 8 bytes);
/// - strings and byte strings: u32 big-endian length, then the bytes (UTF-8 for strings);
/// - optional values: `0x00` when absent, `0x01` followed by the value when present;
/// - enum symbols: as the string of their Avro symbol (`COMPLETED`, `NFC`…), length-prefixed;
/// - arrays: u32 big-endian count, then the elements.
///
/// An input started with [`SigningInput::of`] follows a documented [`SigningLayout`]; debug
/// builds check each field written against it.
#[derive(Debug, Clone)]
pub struct SigningInput {
    bytes: Vec<u8>,
    #[cfg(debug_assertions)]
    cursor: Option<Cursor>,
}

impl PartialEq for SigningInput {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SigningInput {}

impl SigningInput {
    /// Starts an input with its domain-separation tag, outside any documented layout (tests,
    /// inputs being designed).
    ///
    /// # Panics
    /// If the tag is not ASCII or longer than [`TAG_BYTES_MAX`]: tags are constants of this
    /// crate, so this is a programming error, caught by the tests.
    pub fn new(tag: &'static str) -> Self {
        assert!(
            tag.is_ascii() && tag.len() <= TAG_BYTES_MAX,
            "domain tag {tag:?} must be ASCII and at most {TAG_BYTES_MAX} bytes"
        );
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        bytes.extend_from_slice(tag.as_bytes());
        SigningInput {
            bytes,
            #[cfg(debug_assertions)]
            cursor: None,
        }
    }

    /// Starts the input of a documented layout with its tag. In debug builds every field
    /// written is checked against the layout, and [`SigningInput::as_bytes`] and
    /// [`SigningInput::into_bytes`] check that none is missing.
    pub fn of(layout: &'static SigningLayout) -> Self {
        #[allow(unused_mut)]
        let mut input = SigningInput::new(layout.tag);
        #[cfg(debug_assertions)]
        {
            input.cursor = Some(Cursor::new(layout));
        }
        input
    }

    #[cfg(debug_assertions)]
    fn step(&mut self, step: Step<'_>) {
        if let Some(cursor) = &mut self.cursor {
            cursor.step(step);
        }
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn step(&mut self, _step: Step<'_>) {}

    #[cfg(debug_assertions)]
    fn finish(&self) {
        if let Some(cursor) = &self.cursor {
            cursor.finish();
        }
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn finish(&self) {}

    /// Appends a fixed-size value (an id, a digest, a nonce) as it is.
    pub fn fixed(&mut self, value: &[u8]) -> &mut Self {
        self.step(Step::Fixed(value.len()));
        self.bytes.extend_from_slice(value);
        self
    }

    /// Appends a 32-bit integer.
    pub fn i32(&mut self, value: i32) -> &mut Self {
        self.step(Step::I32);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a 64-bit integer.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.step(Step::I64);
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.step(Step::Bytes);
        self.length_prefixed(value);
        self
    }

    /// Appends a length-prefixed UTF-8 string (also how enum symbols are written).
    pub fn string(&mut self, value: &str) -> &mut Self {
        self.step(Step::String(value));
        self.length_prefixed(value.as_bytes());
        self
    }

    /// Appends an optional string.
    pub fn optional_string(&mut self, value: Option<&str>) -> &mut Self {
        self.step(Step::OptionalString);
        match value {
            None => self.bytes.push(0),
            Some(value) => {
                self.bytes.push(1);
                self.length_prefixed(value.as_bytes());
            }
        }
        self
    }

    /// Appends an array count; the caller appends the elements.
    pub fn count(&mut self, count: usize) -> &mut Self {
        self.step(Step::Count(count));
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&count.to_be_bytes());
        self
    }

    /// Appends a presence marker for an optional value; the caller appends the value if present.
    pub fn present(&mut self, present: bool) -> &mut Self {
        self.step(Step::Present(present));
        self.bytes.push(u8::from(present));
        self
    }

    /// The bytes built so far.
    pub fn as_bytes(&self) -> &[u8] {
        self.finish();
        &self.bytes
    }

    /// The finished bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.finish();
        self.bytes
    }

    /// u32 big-endian length, then the bytes. Lengths above `u32::MAX` cannot occur: every
    /// message is bounded far below by the codec's frame limit.
    fn length_prefixed(&mut self, value: &[u8]) {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_each_field_kind_unambiguously() {
        let mut input = SigningInput::new("t");
        input
            .fixed(&[0xaa, 0xbb])
            .i32(-2)
            .i64(1)
            .string("é")
            .optional_string(None)
            .optional_string(Some(""))
            .count(3);
        assert_eq!(
            hex::encode(input.as_bytes()),
            concat!(
                "000174", // tag
                "aabb",
                "fffffffe",
                "0000000000000001",
                "00000002c3a9",
                "00",
                "0100000000",
                "00000003"
            )
        );
    }

    #[test]
    fn moving_bytes_between_adjacent_strings_changes_the_input() {
        let mut a = SigningInput::new("t");
        a.string("ab").string("c");
        let mut b = SigningInput::new("t");
        b.string("a").string("bc");
        assert_ne!(a, b);
    }

    #[test]
    #[should_panic(expected = "domain tag")]
    fn refuses_a_tag_over_the_limit() {
        let _ = SigningInput::new(
            "a-tag-that-is-far-too-long-to-be-a-domain-separation-tag-of-dcpipe-at-all",
        );
    }
}
