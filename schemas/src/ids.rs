//! Fixed-size identifiers and hashes.
//!
//! Each id is its own type so that a payment id cannot be passed where a session id is expected.
//! On the wire they are Avro `fixed` values (named `Uuid`, `Digest32` and `Nonce` in the
//! schemas); in logs they print as a hyphenated UUID or lower-case hex.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// On the wire: the Avro fixed `Uuid` (16 bytes, network order). Displayed as a
        /// hyphenated lower-case UUID.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "apache_avro::serde::fixed")] [u8; 16]);

        impl $name {
            /// Wraps the 16 bytes of a UUID.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// A fresh random (version 4) id, for the party that chooses the id.
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4().into_bytes())
            }

            /// A fresh time-ordered (version 7) id: 48 bits of Unix milliseconds, then random
            /// bits. Ids made later sort later, so a database indexed by id appends new rows
            /// at the end of its index instead of touching a random page for each one.
            pub fn time_ordered() -> Self {
                Self(uuid::Uuid::now_v7().into_bytes())
            }

            /// The 16 bytes of the id.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The id as a [`uuid::Uuid`].
            pub const fn to_uuid(&self) -> uuid::Uuid {
                uuid::Uuid::from_bytes(self.0)
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(value: uuid::Uuid) -> Self {
                Self(value.into_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

uuid_id!(
    /// Id of a payment, chosen by the payer's terminal; a payment clears at most once per id.
    PaymentId
);
uuid_id!(
    /// Id of a settlement instruction.
    InstructionId
);
uuid_id!(
    /// Id of a vehicle's pre-authorization for a service entity.
    AuthorizationId
);
uuid_id!(
    /// Id of a service-complete report.
    ReportId
);
uuid_id!(
    /// Id of a vehicle's session at a service entity (entry to exit).
    SessionId
);
uuid_id!(
    /// Id of a remote control command to a wallet.
    CommandId
);
uuid_id!(
    /// Id of a revocation update.
    RevocationUpdateId
);

macro_rules! bytes32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Displayed as 64 lower-case hex digits.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(#[serde(with = "apache_avro::serde::fixed")] [u8; 32]);

        impl $name {
            /// Wraps 32 bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The 32 bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(value: [u8; 32]) -> Self {
                Self(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

bytes32!(
    /// 32 bytes of a hash or a certificate fingerprint; the field that holds it says which hash
    /// of what. On the wire: the Avro fixed `Digest32`.
    Digest32
);
bytes32!(
    /// 32 fresh random bytes one terminal contributes to a transaction factor. On the wire: the
    /// Avro fixed `Nonce`.
    Nonce
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_id_displays_as_hyphenated_uuid() {
        let id = PaymentId::from_bytes([
            0x67, 0xe5, 0x50, 0x44, 0x10, 0xb1, 0x42, 0x6f, 0x92, 0x47, 0xbb, 0x68, 0x0e, 0x5f,
            0xe0, 0xc8,
        ]);
        assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
        assert_eq!(
            format!("{id:?}"),
            "PaymentId(67e55044-10b1-426f-9247-bb680e5fe0c8)"
        );
    }

    #[test]
    fn digest_displays_as_lower_hex() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xab;
        bytes[31] = 0x01;
        let text = Digest32::from_bytes(bytes).to_string();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("ab00"));
        assert!(text.ends_with("01"));
    }

    #[test]
    fn time_ordered_ids_are_version_7_and_sort_in_creation_order() {
        let ids: Vec<PaymentId> = (0..2_000).map(|_| PaymentId::time_ordered()).collect();
        assert!(ids.iter().all(|id| id.to_uuid().get_version_num() == 7));
        assert!(
            ids.windows(2).all(|pair| pair[0] < pair[1]),
            "ids made later sort later, also within one millisecond"
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let (seconds, nanos) = ids[0]
            .to_uuid()
            .get_timestamp()
            .expect("v7 has a time")
            .to_unix();
        let id_ms = seconds * 1_000 + u64::from(nanos) / 1_000_000;
        assert!(
            now_ms.abs_diff(id_ms) < 60_000,
            "the id carries the time it was made"
        );
    }

    #[test]
    fn random_ids_differ_and_are_version_4() {
        let a = SessionId::random();
        let b = SessionId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_uuid().get_version_num(), 4);
    }
}
