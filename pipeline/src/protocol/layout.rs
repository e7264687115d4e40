//! Every signing input described once, as data: its domain tag and its fields in order, each
//! with its encoding (docs/PROTOCOL.md §3–§5).
//!
//! The builders in this module's siblings start their input with [`SigningInput::of`], which
//! checks in debug builds that every field they append is the next one of the layout, with its
//! encoding, and that none is missing; tests render docs/PROTOCOL.md §4 and §5 and the `.avsc`
//! doc strings of the signature, factor and digest fields from the same data and compare. So
//! the code, the document and the schemas cannot say different things about the signed bytes.
//!
//! [`SigningInput::of`]: super::SigningInput::of

/// How one field of a signing input is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// An id, digest or nonce of this many bytes, as they are (no length prefix).
    Fixed(usize),
    /// A 32-bit integer: big-endian two's complement, 4 bytes.
    I32,
    /// A 64-bit integer: big-endian two's complement, 8 bytes.
    I64,
    /// A string: u32 big-endian byte length, then its UTF-8 bytes.
    String,
    /// A byte string: u32 big-endian length, then the bytes.
    Bytes,
    /// An optional string: `00` when absent; `01`, then the string.
    OptionalString,
    /// An Avro enum: the name of its symbol, written as a string (length-prefixed).
    Symbol(&'static [&'static str]),
    /// A `PartyRef`: its `institution_id`, then its `wallet_id`, each a string.
    Party,
    /// A certificate: SHA-256 of its DER, as 32 bytes (no length prefix).
    Fingerprint,
    /// An array: u32 big-endian element count, then each element's fields in order.
    Array(&'static [Field]),
    /// An optional record: `00` when absent; `01`, then its fields in order.
    Optional(&'static [Field]),
}

/// One field of a signing input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The Avro field it is read from (a path such as `payer.wallet_id` when it is nested).
    pub name: &'static str,
    /// How it is written.
    pub encoding: Encoding,
}

const fn field(name: &'static str, encoding: Encoding) -> Field {
    Field { name, encoding }
}

/// What is made of a signing input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A 64-byte message signature (docs/PROTOCOL.md §3) by the key of this party.
    Signature {
        /// Who signs, e.g. "the payer's terminal".
        signer: &'static str,
    },
    /// The transaction factor: a hash of the input, SHA-256 or SM3 by the payer's algorithm.
    Factor,
}

/// The exact bytes behind one signature (or the transaction factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningLayout {
    /// What the input is, in words: "payer envelope".
    pub name: &'static str,
    /// The domain-separation tag that starts it.
    pub tag: &'static str,
    /// The Avro record that carries the result.
    pub message: &'static str,
    /// The field of [`SigningLayout::message`] that holds the result (a path when nested).
    pub result_field: &'static str,
    /// A signature, or the factor.
    pub output: Output,
    /// The fields after the tag, in order.
    pub fields: &'static [Field],
    /// What a reader should know beyond the field list (may be empty).
    pub note: &'static str,
}

const CHANNELS: &[&str] = &["NFC", "BLUETOOTH", "REMOTE"];
const CLEARING_STATUSES: &[&str] = &["ACCEPTED", "REJECTED"];
const OUTCOME_STATUSES: &[&str] = &["COMPLETED", "REJECTED"];

/// The transaction factor (docs/PROTOCOL.md §4).
pub const TRANSACTION_FACTOR: SigningLayout = SigningLayout {
    name: "transaction factor",
    tag: "dcpipe/v1/transaction-factor",
    message: "TransactionEnvelope",
    result_field: "transaction_factor",
    output: Output::Factor,
    fields: &[
        field("payment_id", Encoding::Fixed(16)),
        field("payer", Encoding::Party),
        field("payee", Encoding::Party),
        field("amount_fen", Encoding::I64),
        field("currency", Encoding::String),
        field("created_at_ms", Encoding::I64),
        field("channel", Encoding::Symbol(CHANNELS)),
        field("payer_nonce", Encoding::Fixed(32)),
        field("payee_nonce", Encoding::Fixed(32)),
        field("payer_certificate", Encoding::Fingerprint),
        field("payee_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// The payee terminal's consent.
pub const PAYEE_CONSENT: SigningLayout = SigningLayout {
    name: "payee consent",
    tag: "dcpipe/v1/payee-consent",
    message: "TransactionEnvelope",
    result_field: "payee_signature",
    output: Output::Signature {
        signer: "the payee's terminal (the key of payee_certificate)",
    },
    fields: &[field("transaction_factor", Encoding::Fixed(32))],
    note: "",
};

/// The payer's secure element's PIN-verification proof.
pub const PIN_PROOF: SigningLayout = SigningLayout {
    name: "PIN proof",
    tag: "dcpipe/v1/pin-proof",
    message: "TransactionEnvelope",
    result_field: "pin_proof.signature",
    output: Output::Signature {
        signer: "the payer's secure element (the key of pin_proof.secure_element_certificate)",
    },
    fields: &[
        field("transaction_factor", Encoding::Fixed(32)),
        field("payer.wallet_id", Encoding::String),
        field("pin_proof.verified_at_ms", Encoding::I64),
    ],
    note: "",
};

/// The payer terminal's signature over the envelope.
pub const PAYER_ENVELOPE: SigningLayout = SigningLayout {
    name: "payer envelope",
    tag: "dcpipe/v1/payer-envelope",
    message: "TransactionEnvelope",
    result_field: "payer_signature",
    output: Output::Signature {
        signer: "the payer's terminal (the key of payer_certificate)",
    },
    fields: &[
        field("transaction_factor", Encoding::Fixed(32)),
        field("payee_signature", Encoding::Bytes),
        field(
            "pin_proof",
            Encoding::Optional(&[
                field("secure_element_certificate", Encoding::Fingerprint),
                field("verified_at_ms", Encoding::I64),
                field("signature", Encoding::Bytes),
            ]),
        ),
    ],
    note: "The other fields of the envelope are covered through transaction_factor, which binds \
           the payment id, both parties, the amount, the currency, the time, the channel, both \
           nonces and both certificates.",
};

/// The payer institution's signature over a clearing message.
pub const CLEARING_MESSAGE: SigningLayout = SigningLayout {
    name: "clearing message",
    tag: "dcpipe/v1/clearing-message",
    message: "ClearingMessage",
    result_field: "institution_signature",
    output: Output::Signature {
        signer: "the payer's institution signer (the key of institution_certificate)",
    },
    fields: &[
        field("payment_id", Encoding::Fixed(16)),
        field("payer", Encoding::Party),
        field("payee", Encoding::Party),
        field("amount_fen", Encoding::I64),
        field("currency", Encoding::String),
        field("transaction_factor", Encoding::Fixed(32)),
        field("envelope_digest", Encoding::Fixed(32)),
        field("reserved_at_ms", Encoding::I64),
        field("expires_at_ms", Encoding::I64),
        field("institution_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// The payee institution's signature over a clearing response.
pub const CLEARING_RESPONSE: SigningLayout = SigningLayout {
    name: "clearing response",
    tag: "dcpipe/v1/clearing-response",
    message: "ClearingResponse",
    result_field: "institution_signature",
    output: Output::Signature {
        signer: "the payee's institution signer (the key of institution_certificate)",
    },
    fields: &[
        field("payment_id", Encoding::Fixed(16)),
        field("payer_institution_id", Encoding::String),
        field("payee_institution_id", Encoding::String),
        field("status", Encoding::Symbol(CLEARING_STATUSES)),
        field("reason_code", Encoding::OptionalString),
        field("amount_fen", Encoding::I64),
        field("responded_at_ms", Encoding::I64),
        field("institution_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// The deciding institution's signature over a payment outcome.
pub const PAYMENT_OUTCOME: SigningLayout = SigningLayout {
    name: "payment outcome",
    tag: "dcpipe/v1/payment-outcome",
    message: "PaymentOutcome",
    result_field: "institution_signature",
    output: Output::Signature {
        signer: "the deciding institution's signer (decided_by; the key of \
                 institution_certificate)",
    },
    fields: &[
        field("payment_id", Encoding::Fixed(16)),
        field("envelope_digest", Encoding::Fixed(32)),
        field("status", Encoding::Symbol(OUTCOME_STATUSES)),
        field("reason_code", Encoding::OptionalString),
        field("detail", Encoding::String),
        field("payer", Encoding::Party),
        field("payee", Encoding::Party),
        field("amount_fen", Encoding::I64),
        field("currency", Encoding::String),
        field("decided_at_ms", Encoding::I64),
        field("decided_by", Encoding::String),
        field("stage", Encoding::String),
        field("institution_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// The central bank's signature over a settlement instruction.
pub const SETTLEMENT_INSTRUCTION: SigningLayout = SigningLayout {
    name: "settlement instruction",
    tag: "dcpipe/v1/settlement-instruction",
    message: "SettlementInstruction",
    result_field: "signature",
    output: Output::Signature {
        signer: "the central bank's settlement signer (the key of issuer_certificate)",
    },
    fields: &[
        field("instruction_id", Encoding::Fixed(16)),
        field("window_id", Encoding::I64),
        field("window_start_at_ms", Encoding::I64),
        field("window_end_at_ms", Encoding::I64),
        field(
            "positions",
            Encoding::Array(&[
                field("institution_id", Encoding::String),
                field("net_fen", Encoding::I64),
                field("debit_fen", Encoding::I64),
                field("credit_fen", Encoding::I64),
                field("clearing_count", Encoding::I64),
            ]),
        ),
        field("late_clearing_count", Encoding::I64),
        field("late_amount_fen", Encoding::I64),
        field("issued_at_ms", Encoding::I64),
        field("issuer_certificate", Encoding::Fingerprint),
    ],
    note: "A position's window_id, window_start_at_ms and window_end_at_ms are not signed: they \
           MUST equal the instruction's, which every decoder checks. SettlementPosition messages \
           published on their own carry no signature; an institution trusts a position only as \
           part of a verified instruction.",
};

/// A certificate authority's signature over a revocation update.
pub const REVOCATION_UPDATE: SigningLayout = SigningLayout {
    name: "revocation update",
    tag: "dcpipe/v1/revocation-update",
    message: "RevocationUpdate",
    result_field: "signature",
    output: Output::Signature {
        signer: "the issuing certificate authority (the key of issuer_certificate)",
    },
    fields: &[
        field("update_id", Encoding::Fixed(16)),
        field("sequence", Encoding::I64),
        field("issuer_fingerprint", Encoding::Fixed(32)),
        field(
            "revoked",
            Encoding::Array(&[
                field("serial", Encoding::Bytes),
                field("revoked_at_ms", Encoding::I64),
                field("reason", Encoding::String),
            ]),
        ),
        field("issued_at_ms", Encoding::I64),
        field("issuer_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

const SERVICE_KINDS: &[&str] = &["TOLL", "PARKING", "CHARGING", "FUEL"];
const METER_UNITS: &[&str] = &["KWH", "LITRE"];

/// A vehicle's telemetry batch (docs/PROTOCOL.md §10.2).
pub const VEHICLE_TELEMETRY_BATCH: SigningLayout = SigningLayout {
    name: "vehicle telemetry batch",
    tag: "dcpipe/v1/vehicle-telemetry-batch",
    message: "VehicleTelemetryBatch",
    result_field: "signature",
    output: Output::Signature {
        signer: "the in-vehicle client (role vehicle; the key of certificate)",
    },
    fields: &[
        field("vehicle_id", Encoding::String),
        field("vehicle_class", Encoding::I32),
        field("wallet", Encoding::Party),
        field("first_sequence", Encoding::I64),
        field("previous_batch_digest", Encoding::Fixed(32)),
        field(
            "reports",
            Encoding::Array(&[
                field("latitude_e7", Encoding::I32),
                field("longitude_e7", Encoding::I32),
                field(
                    "horizontal_accuracy_cm",
                    Encoding::Optional(&[field("horizontal_accuracy_cm", Encoding::I32)]),
                ),
                field("speed_cm_per_s", Encoding::I32),
                field("heading_cdeg", Encoding::I32),
                field("recorded_at_ms", Encoding::I64),
            ]),
        ),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "The batch digest is SHA-256 of this input; the vehicle's next batch names it.",
};

/// One version 1 telemetry report (docs/PROTOCOL.md §10.2).
pub const VEHICLE_TELEMETRY: SigningLayout = SigningLayout {
    name: "vehicle telemetry report",
    tag: "dcpipe/v1/vehicle-telemetry",
    message: "VehicleTelemetry",
    result_field: "signature",
    output: Output::Signature {
        signer: "the in-vehicle client (role vehicle; the key of certificate)",
    },
    fields: &[
        field("vehicle_id", Encoding::String),
        field("vehicle_class", Encoding::I32),
        field("wallet", Encoding::Party),
        field("sequence", Encoding::I64),
        field("latitude_e7", Encoding::I32),
        field("longitude_e7", Encoding::I32),
        field("speed_cm_per_s", Encoding::I32),
        field("heading_cdeg", Encoding::I32),
        field("recorded_at_ms", Encoding::I64),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// A registry entry, ServiceEntity version 2 (docs/PROTOCOL.md §10.3).
pub const SERVICE_ENTITY: SigningLayout = SigningLayout {
    name: "service entity",
    tag: "dcpipe/v1/service-entity",
    message: "ServiceEntity",
    result_field: "signature",
    output: Output::Signature {
        signer: "the institution signer of wallet.institution_id (the key of certificate)",
    },
    fields: &[
        field("entity_id", Encoding::String),
        field("kind", Encoding::Symbol(SERVICE_KINDS)),
        field("name", Encoding::String),
        field("wallet", Encoding::Party),
        field(
            "geofence",
            Encoding::Array(&[
                field("latitude_e7", Encoding::I32),
                field("longitude_e7", Encoding::I32),
            ]),
        ),
        field(
            "tariff.toll",
            Encoding::Optional(&[field(
                "fen_by_vehicle_class",
                Encoding::Array(&[field("fen", Encoding::I64)]),
            )]),
        ),
        field(
            "tariff.parking",
            Encoding::Optional(&[
                field("fen_per_minute", Encoding::I64),
                field("free_minutes", Encoding::I32),
                field("daily_cap_fen", Encoding::I64),
            ]),
        ),
        field(
            "tariff.metered",
            Encoding::Optional(&[
                field("unit", Encoding::Symbol(METER_UNITS)),
                field("fen_per_unit", Encoding::I64),
            ]),
        ),
        field("version", Encoding::I64),
        field("updated_at_ms", Encoding::I64),
        field("removed", Encoding::Optional(&[])),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "removed is written as a presence byte: 01 when the entry removes the entity, 00 \
           otherwise. Version 1 entries (schema 9) carry no signature.",
};

/// A wallet's pre-authorization (docs/PROTOCOL.md §10.4).
pub const SERVICE_AUTHORIZATION: SigningLayout = SigningLayout {
    name: "service authorization",
    tag: "dcpipe/v1/service-authorization",
    message: "ServiceAuthorization",
    result_field: "signature",
    output: Output::Signature {
        signer: "the paying wallet (its terminal or wallet key; the key of certificate)",
    },
    fields: &[
        field("authorization_id", Encoding::Fixed(16)),
        field("vehicle_id", Encoding::String),
        field("wallet", Encoding::Party),
        field("entity_id", Encoding::String),
        field("service_kind", Encoding::Symbol(SERVICE_KINDS)),
        field("max_amount_fen", Encoding::I64),
        field("issued_at_ms", Encoding::I64),
        field("expires_at_ms", Encoding::I64),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// A station's service-complete report (docs/PROTOCOL.md §10.7).
pub const SERVICE_COMPLETE_REPORT: SigningLayout = SigningLayout {
    name: "service-complete report",
    tag: "dcpipe/v1/service-complete-report",
    message: "ServiceCompleteReport",
    result_field: "signature",
    output: Output::Signature {
        signer: "the service entity (role service-entity; the key of certificate)",
    },
    fields: &[
        field("report_id", Encoding::Fixed(16)),
        field("entity_id", Encoding::String),
        field("vehicle_id", Encoding::String),
        field("session_id", Encoding::Fixed(16)),
        field("unit", Encoding::Symbol(METER_UNITS)),
        field("quantity_milli", Encoding::I64),
        field("completed_at_ms", Encoding::I64),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "",
};

const SYNC_STATUSES: &[&str] = &["ACCEPTED", "REJECTED"];
const WALLET_ACTIONS: &[&str] = &["CLOCK_RESYNC", "KEY_ROTATION", "LOCK", "BLACKLIST_UPDATE"];
const CONTROL_COMMANDS: &[&str] = &["LOCK", "UNLOCK", "LIMIT_CHANGE", "BLACKLIST_UPDATE"];

/// The fields of an `OfflineLimits` record, in order.
const OFFLINE_LIMITS_FIELDS: &[Field] = &[
    field("purse_limit_fen", Encoding::I64),
    field("single_payment_limit_fen", Encoding::I64),
    field("cumulative_limit_fen", Encoding::I64),
    field("payments_per_sync_max", Encoding::I64),
    field("offline_duration_ms_max", Encoding::I64),
];

/// The payer wallet's signature over an offline payment; SHA-256 of the same input is the
/// payment's identity (its offline-payment digest).
pub const OFFLINE_PAYMENT: SigningLayout = SigningLayout {
    name: "offline payment",
    tag: "dcpipe/v1/offline-payment",
    message: "OfflinePayment",
    result_field: "signature",
    output: Output::Signature {
        signer: "the payer's wallet (the key of payer_certificate)",
    },
    fields: &[
        field("payer", Encoding::Party),
        field("payee", Encoding::Party),
        field("amount_fen", Encoding::I64),
        field("currency", Encoding::String),
        field("counter", Encoding::I64),
        field("previous_hash", Encoding::Fixed(32)),
        field("paid_at_ms", Encoding::I64),
        field("payer_certificate", Encoding::Fingerprint),
    ],
    note: "SHA-256 of this input is the offline-payment digest: the payment's identity, its \
           link in the payer's hash chain (the next payment's previous_hash) and the source of \
           its payment id.",
};

/// The wallet's signature over its key information set.
pub const WALLET_KEY_SET: SigningLayout = SigningLayout {
    name: "wallet key set",
    tag: "dcpipe/v1/wallet-key-set",
    message: "WalletKeySet",
    result_field: "signature",
    output: Output::Signature {
        signer: "the wallet (the key of certificate)",
    },
    fields: &[
        field("wallet_id", Encoding::String),
        field("institution_id", Encoding::String),
        field("key_version", Encoding::I32),
        field("public_key", Encoding::Bytes),
        field("last_sync_at_ms", Encoding::I64),
        field("satellite_at_ms", Encoding::I64),
        field("offline_duration_ms", Encoding::I64),
        field("offline_payments.count", Encoding::I64),
        field("offline_payments.total_fen", Encoding::I64),
        field("offline_payments.chain_head", Encoding::Fixed(32)),
        field(
            "received",
            Encoding::Array(&[field("digest", Encoding::Fixed(32))]),
        ),
        field("purse_fen", Encoding::I64),
        field("commands_applied_through", Encoding::I64),
        field(
            "anchors_digest",
            Encoding::Optional(&[field("anchors_digest", Encoding::Fixed(32))]),
        ),
        field("certificate", Encoding::Fingerprint),
    ],
    note: "The wallet's own payments are covered through offline_payments.chain_head, the last \
           link of their hash chain; each received frame enters as the offline-payment digest \
           of the payment it carries, in the order of the list.",
};

/// The institution's signature over its answer to a key set.
pub const WALLET_SYNC_RESULT: SigningLayout = SigningLayout {
    name: "wallet sync result",
    tag: "dcpipe/v1/wallet-sync-result",
    message: "WalletSyncResult",
    result_field: "institution_signature",
    output: Output::Signature {
        signer: "the wallet's institution signer (the key of institution_certificate)",
    },
    fields: &[
        field("wallet_id", Encoding::String),
        field("institution_id", Encoding::String),
        field("key_version", Encoding::I32),
        field("status", Encoding::Symbol(SYNC_STATUSES)),
        field("reason_code", Encoding::OptionalString),
        field(
            "actions",
            Encoding::Array(&[field("action", Encoding::Symbol(WALLET_ACTIONS))]),
        ),
        field("platform_time_at_ms", Encoding::I64),
        field(
            "key_set_digest",
            Encoding::Optional(&[field("key_set_digest", Encoding::Fixed(32))]),
        ),
        field("counter", Encoding::I64),
        field(
            "chain_head",
            Encoding::Optional(&[field("chain_head", Encoding::Fixed(32))]),
        ),
        field("purse_fen", Encoding::I64),
        field("offline_limits", Encoding::Optional(OFFLINE_LIMITS_FIELDS)),
        field(
            "blacklist",
            Encoding::Array(&[field("wallet_id", Encoding::String)]),
        ),
        field(
            "trust_anchors",
            Encoding::Array(&[field("certificate", Encoding::Fingerprint)]),
        ),
        field(
            "refused",
            Encoding::Array(&[
                field("payment_id", Encoding::Fixed(16)),
                field("reason_code", Encoding::String),
            ]),
        ),
        field("pending_commands", Encoding::I64),
        field("institution_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// The institution's signature over a command to one of its wallets.
pub const REMOTE_CONTROL_COMMAND: SigningLayout = SigningLayout {
    name: "remote control command",
    tag: "dcpipe/v1/remote-control-command",
    message: "RemoteControlCommand",
    result_field: "institution_signature",
    output: Output::Signature {
        signer: "the wallet's institution signer (the key of institution_certificate)",
    },
    fields: &[
        field("command_id", Encoding::Fixed(16)),
        field("wallet_id", Encoding::String),
        field("institution_id", Encoding::String),
        field("sequence", Encoding::I64),
        field("command", Encoding::Symbol(CONTROL_COMMANDS)),
        field(
            "limits",
            Encoding::Optional(&[
                field("balance_limit_fen", Encoding::I64),
                field("single_payment_limit_fen", Encoding::I64),
                field("daily_limit_fen", Encoding::I64),
                field("password_free_limit_fen", Encoding::I64),
            ]),
        ),
        field("offline_limits", Encoding::Optional(OFFLINE_LIMITS_FIELDS)),
        field(
            "blacklist",
            Encoding::Array(&[field("wallet_id", Encoding::String)]),
        ),
        field("issued_at_ms", Encoding::I64),
        field("institution_certificate", Encoding::Fingerprint),
    ],
    note: "",
};

/// Every signing input of the protocol, in the order docs/PROTOCOL.md lists them.
pub const SIGNING_LAYOUTS: [&SigningLayout; 18] = [
    &TRANSACTION_FACTOR,
    &PAYEE_CONSENT,
    &PIN_PROOF,
    &PAYER_ENVELOPE,
    &CLEARING_MESSAGE,
    &CLEARING_RESPONSE,
    &PAYMENT_OUTCOME,
    &SETTLEMENT_INSTRUCTION,
    &REVOCATION_UPDATE,
    &VEHICLE_TELEMETRY_BATCH,
    &VEHICLE_TELEMETRY,
    &SERVICE_ENTITY,
    &SERVICE_AUTHORIZATION,
    &SERVICE_COMPLETE_REPORT,
    &OFFLINE_PAYMENT,
    &WALLET_KEY_SET,
    &WALLET_SYNC_RESULT,
    &REMOTE_CONTROL_COMMAND,
];

/// One step a builder takes, checked against the layout in debug builds.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step<'a> {
    Fixed(usize),
    I32,
    I64,
    Bytes,
    String(&'a str),
    OptionalString,
    Count(usize),
    Present(bool),
}

/// Where a builder stands in its layout.
#[cfg(debug_assertions)]
#[derive(Debug, Clone)]
pub(super) struct Cursor {
    layout: &'static SigningLayout,
    /// Innermost last: the top-level fields, then the element or optional record being written.
    frames: Vec<Frame>,
}

#[cfg(debug_assertions)]
#[derive(Debug, Clone)]
struct Frame {
    fields: &'static [Field],
    next: usize,
    /// Strings of a party already written (0 or 1).
    party_part: u8,
    /// Array elements still to come after the current one.
    elements_left: usize,
}

#[cfg(debug_assertions)]
impl Cursor {
    pub(super) fn new(layout: &'static SigningLayout) -> Self {
        Cursor {
            layout,
            frames: vec![Frame {
                fields: layout.fields,
                next: 0,
                party_part: 0,
                elements_left: 0,
            }],
        }
    }

    /// The field the next step must write, leaving finished elements and records.
    fn expected(&mut self) -> Option<Field> {
        loop {
            let frame = self.frames.last_mut()?;
            if let Some(field) = frame.fields.get(frame.next) {
                return Some(*field);
            }
            if frame.elements_left > 0 {
                frame.elements_left -= 1;
                frame.next = 0;
            } else {
                self.frames.pop();
            }
        }
    }

    fn done(&mut self) {
        if let Some(frame) = self.frames.last_mut() {
            frame.next += 1;
            frame.party_part = 0;
        }
    }

    /// Checks one step of the builder against the layout.
    ///
    /// # Panics
    /// When the step is not the next field of the layout, with its encoding: a builder that
    /// disagrees with its documented layout is a defect.
    pub(super) fn step(&mut self, step: Step<'_>) {
        let tag = self.layout.tag;
        let Some(field) = self.expected() else {
            panic!("{tag}: {step:?} written after the last field of the layout");
        };
        match (field.encoding, step) {
            (Encoding::Fixed(expected), Step::Fixed(len)) if expected == len => self.done(),
            (Encoding::Fingerprint, Step::Fixed(32))
            | (Encoding::I32, Step::I32)
            | (Encoding::I64, Step::I64)
            | (Encoding::Bytes, Step::Bytes)
            | (Encoding::String, Step::String(_))
            | (Encoding::OptionalString, Step::OptionalString) => self.done(),
            (Encoding::Symbol(symbols), Step::String(symbol)) if symbols.contains(&symbol) => {
                self.done();
            }
            (Encoding::Party, Step::String(_)) => {
                let finished = self.frames.last().is_some_and(|f| f.party_part == 1);
                if finished {
                    self.done();
                } else if let Some(frame) = self.frames.last_mut() {
                    frame.party_part = 1;
                }
            }
            (Encoding::Array(elements), Step::Count(count)) => {
                self.done();
                if count > 0 {
                    self.frames.push(Frame {
                        fields: elements,
                        next: 0,
                        party_part: 0,
                        elements_left: count - 1,
                    });
                }
            }
            (Encoding::Optional(fields), Step::Present(present)) => {
                self.done();
                if present {
                    self.frames.push(Frame {
                        fields,
                        next: 0,
                        party_part: 0,
                        elements_left: 0,
                    });
                }
            }
            (encoding, step) => panic!(
                "{tag}: field {} is {encoding:?} but the builder wrote {step:?}",
                field.name
            ),
        }
    }

    /// Checks that every field of the layout was written.
    ///
    /// # Panics
    /// When a field is missing.
    pub(super) fn finish(&self) {
        let open = self
            .frames
            .iter()
            .rev()
            .find(|f| f.next < f.fields.len() || f.elements_left > 0);
        if let Some(frame) = open {
            let missing = frame
                .fields
                .get(frame.next)
                .map_or("an element", |f| f.name);
            panic!("{}: ends before {missing}", self.layout.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_within_the_limit() {
        let mut tags: Vec<&str> = SIGNING_LAYOUTS.iter().map(|l| l.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), SIGNING_LAYOUTS.len());
        assert!(tags.iter().all(|t| t.starts_with("dcpipe/v1/")));
    }

    /// The checks exist in debug builds only.
    #[cfg(debug_assertions)]
    mod cursor {
        use super::super::*;
        use crate::protocol::SigningInput;

        const NESTED: SigningLayout = SigningLayout {
            name: "nested",
            tag: "test/nested",
            message: "Test",
            result_field: "signature",
            output: Output::Signature { signer: "a test" },
            fields: &[
                field("who", Encoding::Party),
                field(
                    "items",
                    Encoding::Array(&[
                        field("name", Encoding::String),
                        field("proof", Encoding::Optional(&[field("at", Encoding::I64)])),
                    ]),
                ),
                field("status", Encoding::Symbol(OUTCOME_STATUSES)),
            ],
            note: "",
        };

        #[test]
        fn a_builder_following_the_layout_passes_with_arrays_and_optionals() {
            let mut input = SigningInput::of(&NESTED);
            input.string("oi01").string("w-1").count(2);
            input.string("a").present(true).i64(7);
            input.string("b").present(false);
            input.string("COMPLETED");
            // tag, party, count, "a" with its proof, "b" without, the symbol
            assert_eq!(
                input.into_bytes().len(),
                13 + 15 + 4 + (5 + 1 + 8) + (5 + 1) + 13
            );
        }

        #[test]
        #[should_panic(expected = "test/nested: field status is Symbol")]
        fn a_symbol_outside_the_enum_is_caught() {
            let mut input = SigningInput::of(&NESTED);
            input.string("oi01").string("w-1").count(0).string("DONE");
        }

        #[test]
        #[should_panic(expected = "test/nested: field items is Array")]
        fn a_field_of_the_wrong_encoding_is_caught() {
            let mut input = SigningInput::of(&NESTED);
            input.string("oi01").string("w-1").i64(2);
        }

        #[test]
        #[should_panic(expected = "test/nested: ends before proof")]
        fn a_missing_field_is_caught() {
            let mut input = SigningInput::of(&NESTED);
            input.string("oi01").string("w-1").count(1).string("a");
            let _ = input.into_bytes();
        }
    }
}
