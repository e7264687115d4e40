//! The named limits of the payment flow, configurable per deployment.

/// Largest allowed difference between an envelope's time and the institution's clock, unless
/// configured otherwise: 2 minutes.
pub const CLOCK_SKEW_MS_MAX_DEFAULT: i64 = 2 * 60 * 1000;

/// How long a reservation waits for the payee's institution, unless configured otherwise.
pub const RESERVATION_TTL_MS_DEFAULT: i64 = 30 * 1000;

/// How far a PIN proof's time may be from the envelope's time: the PIN is verified during the
/// same touch.
pub const PIN_PROOF_AGE_MS_MAX_DEFAULT: i64 = 60 * 1000;

/// Margin the payee's institution keeps before a reservation's expiry: it refuses to credit a
/// clearing message that could expire before its answer arrives.
pub const EXPIRY_MARGIN_MS_DEFAULT: i64 = 2 * 1000;

/// How the payment stages judge time and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentPolicy {
    /// Largest allowed |envelope time − institution clock|.
    pub clock_skew_ms_max: i64,
    /// Reservation lifetime.
    pub reservation_ttl_ms: i64,
    /// Largest allowed |PIN proof time − envelope time|.
    pub pin_proof_age_ms_max: i64,
    /// The payee's safety margin before a reservation's expiry.
    pub expiry_margin_ms: i64,
}

impl Default for PaymentPolicy {
    fn default() -> Self {
        PaymentPolicy {
            clock_skew_ms_max: CLOCK_SKEW_MS_MAX_DEFAULT,
            reservation_ttl_ms: RESERVATION_TTL_MS_DEFAULT,
            pin_proof_age_ms_max: PIN_PROOF_AGE_MS_MAX_DEFAULT,
            expiry_margin_ms: EXPIRY_MARGIN_MS_DEFAULT,
        }
    }
}
