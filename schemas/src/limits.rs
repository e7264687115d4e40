//! Named limits of the contract.
//!
//! Every size, count and range a message may have is bounded here, so that a hostile or broken
//! producer cannot make a consumer allocate, loop or store without bound, and so that the limits
//! are one list that docs/SCHEMAS.md repeats. Encoding and decoding check the same limits.

/// Largest frame (header and datum) of any message but [`DeadLetter`](crate::DeadLetter).
///
/// 64 KiB holds the largest legitimate message (a settlement instruction with
/// [`POSITIONS_MAX`] positions) with room to spare, and is small enough that a consumer may hold
/// thousands of frames in flight.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;

/// Largest [`DeadLetter`](crate::DeadLetter) frame: it carries an original of up to
/// [`DEAD_LETTER_ORIGINAL_BYTES_MAX`] plus its subject, detail and headers. With every field at
/// its limit a dead letter takes about 84 KiB, so one cut to the limits always fits.
pub const DEAD_LETTER_FRAME_BYTES_MAX: usize = 96 * 1024;

/// Most original bytes a dead letter keeps; a longer original is cut and its full length kept in
/// `original_size_bytes`. Equal to [`FRAME_BYTES_MAX`], so any frame that was not too large is
/// kept whole.
pub const DEAD_LETTER_ORIGINAL_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// Longest id (institution, wallet, vehicle, entity, stage), in ASCII characters.
///
/// Ids are 1 to 64 ASCII letters, digits, `-` or `_`: safe as a NATS subject token, a Kafka key
/// and a file name.
pub const ID_CHARS_MAX: usize = 64;

/// Longest reason code (`cert.expired`), in ASCII characters: lower-case letters, digits, `.`
/// and `_`.
pub const REASON_CODE_CHARS_MAX: usize = 64;

/// Longest human-readable detail, in bytes of UTF-8.
pub const DETAIL_BYTES_MAX: usize = 1024;

/// Longest display name of a service entity, in bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 256;

/// Longest bus subject or topic name kept in a dead letter, in bytes of UTF-8.
pub const SUBJECT_BYTES_MAX: usize = 256;

/// Most headers kept in a dead letter.
pub const HEADERS_MAX: usize = 32;

/// Longest header name or value kept in a dead letter, in bytes of UTF-8 (a W3C
/// `traceparent` is 55).
pub const HEADER_BYTES_MAX: usize = 256;

/// Largest DER certificate. Real P-256 and SM2 certificates are 400 to 1,200 bytes.
pub const CERTIFICATE_BYTES_MAX: usize = 4096;

/// Largest signature. DER ECDSA P-256 and SM2 signatures are at most 72 bytes; the margin leaves
/// room for a later algorithm without a schema change.
pub const SIGNATURE_BYTES_MAX: usize = 256;

/// Largest DER SubjectPublicKeyInfo of a wallet key (91 bytes for P-256 and SM2).
pub const PUBLIC_KEY_BYTES_MAX: usize = 512;

/// Longest certificate serial number, in bytes (RFC 5280, 4.1.2.2).
pub const SERIAL_BYTES_MAX: usize = 20;

/// Largest single amount (a payment, a pre-authorization, a fee, a limit), in fen: 10 trillion
/// CNY. It keeps the sum of up to 9,000 such amounts inside `i64`.
pub const AMOUNT_FEN_MAX: i64 = 1_000_000_000_000_000;

/// Most positions in one settlement instruction: one per operating institution.
pub const POSITIONS_MAX: usize = 256;

/// Fewest points of a geofence ring: a triangle.
pub const GEOFENCE_POINTS_MIN: usize = 3;

/// Most points of a geofence ring.
pub const GEOFENCE_POINTS_MAX: usize = 256;

/// Highest toll vehicle class; classes run from 1.
pub const VEHICLE_CLASSES_MAX: usize = 16;

/// Most revoked certificates in one revocation update; a larger backlog is split in several.
pub const REVOKED_PER_UPDATE_MAX: usize = 512;

/// Most wallet ids in one blacklist update.
pub const BLACKLIST_ENTRIES_MAX: usize = 512;

/// Most offline payment records in each list of a wallet key set (the wallet's own payments,
/// and those it received): a hard wallet synchronizes before it holds more.
pub const OFFLINE_PAYMENTS_PER_KEY_SET_MAX: usize = 32;

/// Largest wallet key set frame: its own frame plus up to twice
/// [`OFFLINE_PAYMENTS_PER_KEY_SET_MAX`] offline payment frames, each of which may carry a
/// certificate of [`CERTIFICATE_BYTES_MAX`]. A key set of 20 payments with real certificates
/// is about 20 KB.
pub const WALLET_KEY_SET_FRAME_BYTES_MAX: usize = 384 * 1024;

/// Most trust anchors (the root and the institution CAs) one sync result carries.
pub const TRUST_ANCHORS_MAX: usize = 128;

/// Most refused offline payments one sync result lists: every received payment of a key set.
pub const REFUSED_PAYMENTS_MAX: usize = OFFLINE_PAYMENTS_PER_KEY_SET_MAX;

/// Largest wallet sync result frame: with every trust anchor at [`CERTIFICATE_BYTES_MAX`] and a
/// full blacklist. A result without anchors is under 2 KB.
pub const WALLET_SYNC_RESULT_FRAME_BYTES_MAX: usize = 640 * 1024;

/// Latitude bound in 1e-7 degrees (90 degrees).
pub const LATITUDE_E7_MAX: i32 = 900_000_000;

/// Longitude bound in 1e-7 degrees (180 degrees).
pub const LONGITUDE_E7_MAX: i32 = 1_800_000_000;

/// Highest ground speed in centimetres per second (720 km/h): above it a report is corrupt.
pub const SPEED_CM_PER_S_MAX: i32 = 20_000;

/// Highest heading in hundredths of a degree.
pub const HEADING_CDEG_MAX: i32 = 35_999;

/// Most reports in one signed telemetry batch.
pub const TELEMETRY_REPORTS_PER_BATCH_MAX: usize = 256;

/// Largest horizontal accuracy a report may state, in centimetres (1 km): a receiver that
/// knows less than that has no fix worth sending.
pub const HORIZONTAL_ACCURACY_CM_MAX: i32 = 100_000;
