//! Flow 3: vehicles pay where they are. Telemetry, pre-authorizations, the registry of service
//! entities with their geofences and tariffs, and metered service reports.

use serde::{Deserialize, Serialize};

use crate::{
    AuthorizationId, PartyRef, ReportId, SessionId, check,
    codec::{Message, sealed::Sealed},
    error::CodecError,
    limits::{
        AMOUNT_FEN_MAX, GEOFENCE_POINTS_MAX, GEOFENCE_POINTS_MIN, HEADING_CDEG_MAX, NAME_BYTES_MAX,
        SPEED_CM_PER_S_MAX, VEHICLE_CLASSES_MAX,
    },
};

/// Highest vehicle class, as the `int` of the schema.
const VEHICLE_CLASS_MAX: i32 = VEHICLE_CLASSES_MAX as i32;

/// A signed position report from an in-vehicle client (schema id 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleTelemetry {
    /// Vehicle id, e.g. its VIN.
    pub vehicle_id: String,
    /// Toll vehicle class, 1 to [`VEHICLE_CLASSES_MAX`].
    pub vehicle_class: i32,
    /// The wallet that pays for the vehicle.
    pub wallet: PartyRef,
    /// Per-vehicle report counter; rises by one per report.
    pub sequence: i64,
    /// Latitude in 1e-7 degrees (WGS 84).
    pub latitude_e7: i32,
    /// Longitude in 1e-7 degrees (WGS 84).
    pub longitude_e7: i32,
    /// Ground speed in centimetres per second.
    pub speed_cm_per_s: i32,
    /// Heading in hundredths of a degree clockwise from true north.
    pub heading_cdeg: i32,
    /// When the position was taken (Unix epoch milliseconds).
    pub recorded_at_ms: i64,
    /// DER certificate of the in-vehicle client.
    #[serde(with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for VehicleTelemetry {}

impl Message for VehicleTelemetry {
    const NAME: &'static str = "VehicleTelemetry";
    const SCHEMA_ID: u32 = 7;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("vehicle_id", &self.vehicle_id)?;
        check::range("vehicle_class", self.vehicle_class, 1, VEHICLE_CLASS_MAX)?;
        self.wallet.check("wallet")?;
        check::non_negative("sequence", self.sequence)?;
        check::position(self.latitude_e7, self.longitude_e7)?;
        check::range("speed_cm_per_s", self.speed_cm_per_s, 0, SPEED_CM_PER_S_MAX)?;
        check::range("heading_cdeg", self.heading_cdeg, 0, HEADING_CDEG_MAX)?;
        check::non_negative("recorded_at_ms", self.recorded_at_ms)?;
        check::certificate("certificate", &self.certificate)?;
        check::signature("signature", &self.signature)
    }
}

/// What a service entity sells (Avro enum `ServiceKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceKind {
    /// A toll gantry: a fee per pass by vehicle class.
    Toll,
    /// A parking lot: a fee per minute.
    Parking,
    /// A charging station: a fee per kWh.
    Charging,
    /// A fuel station: a fee per litre.
    Fuel,
}

/// A wallet's pre-authorization for one service entity to charge up to a maximum amount
/// (schema id 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAuthorization {
    /// Id of this pre-authorization.
    pub authorization_id: AuthorizationId,
    /// The vehicle it is for.
    pub vehicle_id: String,
    /// The wallet that pays.
    pub wallet: PartyRef,
    /// The service entity allowed to charge.
    pub entity_id: String,
    /// The service authorized.
    pub service_kind: ServiceKind,
    /// The most the entity may charge, in fen; strictly positive.
    pub max_amount_fen: i64,
    /// When the wallet signed (Unix epoch milliseconds).
    pub issued_at_ms: i64,
    /// When the authorization becomes void; after `issued_at_ms`.
    pub expires_at_ms: i64,
    /// DER certificate of the paying wallet's terminal.
    #[serde(with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for ServiceAuthorization {}

impl Message for ServiceAuthorization {
    const NAME: &'static str = "ServiceAuthorization";
    const SCHEMA_ID: u32 = 8;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("vehicle_id", &self.vehicle_id)?;
        self.wallet.check("wallet")?;
        check::id("entity_id", &self.entity_id)?;
        check::amount_positive("max_amount_fen", self.max_amount_fen)?;
        check::non_negative("issued_at_ms", self.issued_at_ms)?;
        check::after(
            "expires_at_ms",
            self.expires_at_ms,
            "issued_at_ms",
            self.issued_at_ms,
        )?;
        check::certificate("certificate", &self.certificate)?;
        check::signature("signature", &self.signature)
    }
}

/// A WGS 84 point in 1e-7 degrees (Avro record `GeoPoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude in 1e-7 degrees.
    pub latitude_e7: i32,
    /// Longitude in 1e-7 degrees.
    pub longitude_e7: i32,
}

/// A fixed fee per pass, by vehicle class (Avro record `TollTariff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TollTariff {
    /// Fee per pass in fen; element `i` is the fee for vehicle class `i + 1`.
    pub fen_by_vehicle_class: Vec<i64>,
}

/// A fee per started minute after a free period, capped per day (Avro record `ParkingTariff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkingTariff {
    /// Fee per started minute, in fen.
    pub fen_per_minute: i64,
    /// Minutes free of charge at the start of each stay.
    pub free_minutes: i32,
    /// Most charged per calendar day of a stay, in fen.
    pub daily_cap_fen: i64,
}

/// Unit of a metered service (Avro enum `MeterUnit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeterUnit {
    /// Kilowatt-hours of electric energy.
    Kwh,
    /// Litres of fuel.
    Litre,
}

/// A fee per unit delivered (Avro record `MeteredTariff`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteredTariff {
    /// Unit delivered: `Kwh` for charging, `Litre` for fuel.
    pub unit: MeterUnit,
    /// Fee per whole unit, in fen.
    pub fen_per_unit: i64,
}

/// How a service entity computes fees (Avro record `Tariff`); the part of the entity's kind must
/// be present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tariff {
    /// Toll tariff, for toll gantries.
    pub toll: Option<TollTariff>,
    /// Parking tariff, for parking lots.
    pub parking: Option<ParkingTariff>,
    /// Metered tariff, for charging and fuel stations.
    pub metered: Option<MeteredTariff>,
}

impl Tariff {
    fn check(&self, kind: ServiceKind) -> Result<(), CodecError> {
        if let Some(toll) = &self.toll {
            check::count(
                "toll.fen_by_vehicle_class",
                toll.fen_by_vehicle_class.len(),
                1,
                VEHICLE_CLASSES_MAX,
            )?;
            if let Some(index) = toll
                .fen_by_vehicle_class
                .iter()
                .position(|fen| !(0..=AMOUNT_FEN_MAX).contains(fen))
            {
                return Err(CodecError::invalid_field(
                    &format!("toll.fen_by_vehicle_class[{index}]"),
                    format_args!("outside 0..={AMOUNT_FEN_MAX}"),
                ));
            }
        }
        if let Some(parking) = &self.parking {
            check::amount("parking.fen_per_minute", parking.fen_per_minute)?;
            check::range("parking.free_minutes", parking.free_minutes, 0, i32::MAX)?;
            check::amount("parking.daily_cap_fen", parking.daily_cap_fen)?;
        }
        if let Some(metered) = &self.metered {
            check::amount("metered.fen_per_unit", metered.fen_per_unit)?;
        }
        let fits_kind = match kind {
            ServiceKind::Toll => self.toll.is_some(),
            ServiceKind::Parking => self.parking.is_some(),
            ServiceKind::Charging => self
                .metered
                .as_ref()
                .is_some_and(|m| m.unit == MeterUnit::Kwh),
            ServiceKind::Fuel => self
                .metered
                .as_ref()
                .is_some_and(|m| m.unit == MeterUnit::Litre),
        };
        if fits_kind {
            Ok(())
        } else {
            Err(CodecError::invalid_field(
                "tariff",
                format_args!("no tariff for an entity of kind {kind:?}"),
            ))
        }
    }
}

/// A registry entry for a toll gantry, parking lot, charging station or fuel station
/// (schema id 17, version 2; version 1 is schema id 9, without removal or signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntity {
    /// Service entity id.
    pub entity_id: String,
    /// What the entity sells.
    pub kind: ServiceKind,
    /// Display name (at most [`NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// The entity's own wallet, which receives payments.
    pub wallet: PartyRef,
    /// Polygon ring bounding the entity; the last point connects back to the first.
    pub geofence: Vec<GeoPoint>,
    /// How the entity computes fees.
    pub tariff: Tariff,
    /// Registry version of this entry; rises with each change.
    pub version: i64,
    /// When this version was made (Unix epoch milliseconds).
    pub updated_at_ms: i64,
    /// Whether this version removes the entity from the registry (version 2; `false` when
    /// read from a version 1 frame).
    #[serde(default)]
    pub removed: bool,
    /// DER certificate of the institution signer of `wallet.institution_id` (version 2; empty
    /// when read from a version 1 frame).
    #[serde(default, with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// That signer's signature over every other field (version 2; empty from version 1).
    #[serde(default, with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for ServiceEntity {}

impl Message for ServiceEntity {
    const NAME: &'static str = "ServiceEntity";
    const SCHEMA_ID: u32 = 17;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("entity_id", &self.entity_id)?;
        check::non_empty_text("name", &self.name, NAME_BYTES_MAX)?;
        self.wallet.check("wallet")?;
        check::count(
            "geofence",
            self.geofence.len(),
            GEOFENCE_POINTS_MIN,
            GEOFENCE_POINTS_MAX,
        )?;
        for (index, point) in self.geofence.iter().enumerate() {
            check::position(point.latitude_e7, point.longitude_e7)
                .map_err(|e| e.within(format_args!("geofence[{index}]")))?;
        }
        self.tariff.check(self.kind)?;
        check::non_negative("version", self.version)?;
        check::non_negative("updated_at_ms", self.updated_at_ms)?;
        // Empty in a version 1 frame (no signature then); a present certificate is bounded.
        if !self.certificate.is_empty() {
            check::certificate("certificate", &self.certificate)?;
        }
        check::signature("signature", &self.signature)
    }
}

/// A charging or fuel station's signed report of the quantity delivered in a session
/// (schema id 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCompleteReport {
    /// Id of this report.
    pub report_id: ReportId,
    /// The reporting service entity.
    pub entity_id: String,
    /// The vehicle served.
    pub vehicle_id: String,
    /// The session this report closes.
    pub session_id: SessionId,
    /// Unit of `quantity_milli`.
    pub unit: MeterUnit,
    /// Quantity delivered in thousandths of a kWh or litre.
    pub quantity_milli: i64,
    /// When delivery ended (Unix epoch milliseconds).
    pub completed_at_ms: i64,
    /// DER certificate of the service entity.
    #[serde(with = "apache_avro::serde::bytes")]
    pub certificate: Vec<u8>,
    /// Reserved: protocol v1 defines no signing input for this message yet.
    #[serde(with = "apache_avro::serde::bytes")]
    pub signature: Vec<u8>,
}

impl Sealed for ServiceCompleteReport {}

impl Message for ServiceCompleteReport {
    const NAME: &'static str = "ServiceCompleteReport";
    const SCHEMA_ID: u32 = 10;

    fn validate(&self) -> Result<(), CodecError> {
        check::id("entity_id", &self.entity_id)?;
        check::id("vehicle_id", &self.vehicle_id)?;
        check::non_negative("quantity_milli", self.quantity_milli)?;
        check::non_negative("completed_at_ms", self.completed_at_ms)?;
        check::certificate("certificate", &self.certificate)?;
        check::signature("signature", &self.signature)
    }
}
