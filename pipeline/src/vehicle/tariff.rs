//! Fees in integer fen from an entity's tariff: toll per pass by vehicle class, parking per
//! started minute after a free period with a cap per business day, charging per kWh and fuel
//! per litre from the quantity a station reports.
//!
//! Every fee is computed with checked arithmetic and bounded by the ledger's largest amount
//! ([`AMOUNT_FEN_MAX`]); the tariff is the one of the entity version in force at the start of
//! the session (the caller passes the one [`OpenSession`](super::session::OpenSession) keeps).

use dcpipe_connectors::ledger::{AMOUNT_FEN_MAX, BUSINESS_DAY_OFFSET_MS, MS_PER_DAY, business_day};
use dcpipe_schemas::{MeterUnit, Tariff};

use crate::reason::{Reason, Rejected};

/// Milliseconds in a minute.
const MS_PER_MINUTE: i64 = 60_000;

/// Longest stay a parking fee is computed for: beyond it an operator must look.
pub const PARKING_STAY_MS_MAX: i64 = 366 * MS_PER_DAY;

/// Thousandths of a unit in a unit (metered quantities are in thousandths).
const MILLI_PER_UNIT: i128 = 1_000;

fn overflow(what: &str) -> Rejected {
    Rejected::new(
        Reason::TariffOverflow,
        format!("{what} exceeds {AMOUNT_FEN_MAX} fen"),
    )
}

fn bounded(fee: i128, what: &str) -> Result<i64, Rejected> {
    i64::try_from(fee)
        .ok()
        .filter(|fee| (0..=AMOUNT_FEN_MAX).contains(fee))
        .ok_or_else(|| overflow(what))
}

/// The toll for one pass of a vehicle of `vehicle_class` (1 to the number of classes the
/// tariff lists).
pub fn toll_fee(tariff: &Tariff, vehicle_class: i32) -> Result<i64, Rejected> {
    let toll = tariff
        .toll
        .as_ref()
        .ok_or_else(|| Rejected::new(Reason::TariffMissing, "no toll tariff"))?;
    let fee = usize::try_from(vehicle_class)
        .ok()
        .and_then(|class| class.checked_sub(1))
        .and_then(|index| toll.fen_by_vehicle_class.get(index))
        .ok_or_else(|| {
            Rejected::new(
                Reason::TariffVehicleClass,
                format!(
                    "vehicle class {vehicle_class}; the tariff lists classes 1 to {}",
                    toll.fen_by_vehicle_class.len()
                ),
            )
        })?;
    bounded(i128::from(*fee), "the toll")
}

/// The parking fee for a stay from `entered_at_ms` to `exited_at_ms`: the first
/// `free_minutes` are free; after them every started minute costs `fen_per_minute`, each
/// minute counting on the business day (UTC+8, as the ledger's daily limits) it starts in, and
/// what one business day costs is capped at `daily_cap_fen`.
pub fn parking_fee(
    tariff: &Tariff,
    entered_at_ms: i64,
    exited_at_ms: i64,
) -> Result<i64, Rejected> {
    let parking = tariff
        .parking
        .as_ref()
        .ok_or_else(|| Rejected::new(Reason::TariffMissing, "no parking tariff"))?;
    if exited_at_ms < entered_at_ms {
        return Err(Rejected::new(
            Reason::TariffTimeReversed,
            format!("exit at {exited_at_ms} ms before entry at {entered_at_ms} ms"),
        ));
    }
    let stay_ms = exited_at_ms
        .checked_sub(entered_at_ms)
        .ok_or_else(|| overflow("the stay"))?;
    if stay_ms > PARKING_STAY_MS_MAX {
        return Err(Rejected::new(
            Reason::TariffStayTooLong,
            format!("a stay of {stay_ms} ms, at most {PARKING_STAY_MS_MAX}"),
        ));
    }
    let free_ms = i64::from(parking.free_minutes.max(0)) * MS_PER_MINUTE;
    let charged_from_ms = entered_at_ms.saturating_add(free_ms);
    if exited_at_ms <= charged_from_ms {
        return Ok(0);
    }
    // Minute k of the charged time starts at charged_from_ms + k minutes.
    let started_minutes = (exited_at_ms - charged_from_ms + MS_PER_MINUTE - 1) / MS_PER_MINUTE;
    // The first minute starting at or after `at_ms`.
    let first_minute_from = |at_ms: i64| -> i64 {
        let offset_ms = at_ms - charged_from_ms;
        if offset_ms <= 0 {
            0
        } else {
            ((offset_ms + MS_PER_MINUTE - 1) / MS_PER_MINUTE).min(started_minutes)
        }
    };
    let last_minute_at_ms = charged_from_ms + (started_minutes - 1) * MS_PER_MINUTE;
    let mut total: i128 = 0;
    for day in business_day(charged_from_ms)..=business_day(last_minute_at_ms) {
        let day_start_ms = day * MS_PER_DAY - BUSINESS_DAY_OFFSET_MS;
        let minutes =
            first_minute_from(day_start_ms + MS_PER_DAY) - first_minute_from(day_start_ms);
        let day_fee = (i128::from(minutes) * i128::from(parking.fen_per_minute))
            .min(i128::from(parking.daily_cap_fen));
        total += day_fee;
    }
    bounded(total, "the parking fee")
}

/// The fee for `quantity_milli` thousandths of a unit: `fen_per_unit` per whole unit, pro rata
/// in thousandths, rounded up to the next fen (the schema's rule).
pub fn metered_fee(tariff: &Tariff, unit: MeterUnit, quantity_milli: i64) -> Result<i64, Rejected> {
    let metered = tariff
        .metered
        .as_ref()
        .ok_or_else(|| Rejected::new(Reason::TariffMissing, "no metered tariff"))?;
    if metered.unit != unit {
        return Err(Rejected::new(
            Reason::TariffUnitMismatch,
            format!("reported in {unit:?}, the tariff is per {:?}", metered.unit),
        ));
    }
    if quantity_milli < 0 {
        return Err(overflow("a negative quantity"));
    }
    let thousandths = i128::from(quantity_milli) * i128::from(metered.fen_per_unit);
    let fee = (thousandths + MILLI_PER_UNIT - 1).div_euclid(MILLI_PER_UNIT);
    bounded(fee, "the metered fee")
}

#[cfg(test)]
mod tests {
    use dcpipe_schemas::{MeteredTariff, ParkingTariff, TollTariff};

    use super::*;

    /// 2025-11-24T16:00:00Z, midnight of a business day in UTC+8.
    const MIDNIGHT_UTC8_MS: i64 = 1_764_000_000_000;
    const MINUTE: i64 = MS_PER_MINUTE;

    fn parking(fen_per_minute: i64, free_minutes: i32, daily_cap_fen: i64) -> Tariff {
        Tariff {
            toll: None,
            parking: Some(ParkingTariff {
                fen_per_minute,
                free_minutes,
                daily_cap_fen,
            }),
            metered: None,
        }
    }

    fn toll(fees: Vec<i64>) -> Tariff {
        Tariff {
            toll: Some(TollTariff {
                fen_by_vehicle_class: fees,
            }),
            parking: None,
            metered: None,
        }
    }

    fn metered(unit: MeterUnit, fen_per_unit: i64) -> Tariff {
        Tariff {
            toll: None,
            parking: None,
            metered: Some(MeteredTariff { unit, fen_per_unit }),
        }
    }

    #[test]
    fn the_constant_is_a_business_day_boundary() {
        assert_eq!(
            business_day(MIDNIGHT_UTC8_MS),
            business_day(MIDNIGHT_UTC8_MS - 1) + 1
        );
    }

    #[test]
    fn toll_is_the_fee_of_the_vehicle_class() {
        let tariff = toll(vec![500, 800, 1_200]);
        assert_eq!(toll_fee(&tariff, 1), Ok(500));
        assert_eq!(toll_fee(&tariff, 3), Ok(1_200));
    }

    #[test]
    fn toll_refuses_a_class_out_of_range() {
        let tariff = toll(vec![500, 800]);
        for class in [0, 3, -1, i32::MAX] {
            let refused = toll_fee(&tariff, class).expect_err("class out of range");
            assert_eq!(refused.reason, Reason::TariffVehicleClass, "{class}");
        }
        let refused = toll_fee(&parking(1, 0, 1), 1).expect_err("not a toll");
        assert_eq!(refused.reason, Reason::TariffMissing);
    }

    #[test]
    fn parking_within_the_grace_period_is_free() {
        let tariff = parking(10, 15, 6_000);
        let t0 = MIDNIGHT_UTC8_MS + 9 * 60 * MINUTE;
        assert_eq!(parking_fee(&tariff, t0, t0), Ok(0));
        assert_eq!(parking_fee(&tariff, t0, t0 + 15 * MINUTE), Ok(0));
    }

    #[test]
    fn parking_charges_every_started_minute_after_the_grace_period() {
        let tariff = parking(10, 15, 6_000);
        let t0 = MIDNIGHT_UTC8_MS + 9 * 60 * MINUTE;
        assert_eq!(parking_fee(&tariff, t0, t0 + 15 * MINUTE + 1), Ok(10));
        assert_eq!(parking_fee(&tariff, t0, t0 + 16 * MINUTE), Ok(10));
        assert_eq!(parking_fee(&tariff, t0, t0 + 16 * MINUTE + 1), Ok(20));
        assert_eq!(parking_fee(&tariff, t0, t0 + 75 * MINUTE), Ok(600));
    }

    #[test]
    fn parking_caps_each_business_day() {
        let tariff = parking(10, 0, 6_000);
        let t0 = MIDNIGHT_UTC8_MS + 8 * 60 * MINUTE;
        // Sixteen hours on one day: 960 minutes would be 9,600 fen, capped at 6,000.
        assert_eq!(
            parking_fee(&tariff, t0, t0 + 16 * 60 * MINUTE - 1),
            Ok(6_000)
        );
        // Three days and a bit: three capped days and the minutes of the fourth.
        let three_days_later = MIDNIGHT_UTC8_MS + 3 * MS_PER_DAY;
        assert_eq!(
            parking_fee(&tariff, MIDNIGHT_UTC8_MS, three_days_later + 30 * MINUTE),
            Ok(3 * 6_000 + 300)
        );
    }

    #[test]
    fn parking_splits_a_stay_at_the_business_day_boundary() {
        let tariff = parking(10, 0, 500);
        // 23:30 to 00:45 in UTC+8: 30 minutes on the first day, 45 on the second, each capped
        // separately: 300 + 450, not min(750, 500).
        let entered = MIDNIGHT_UTC8_MS - 30 * MINUTE;
        assert_eq!(
            parking_fee(&tariff, entered, MIDNIGHT_UTC8_MS + 45 * MINUTE),
            Ok(750)
        );
        let tariff = parking(10, 0, 400);
        assert_eq!(
            parking_fee(&tariff, entered, MIDNIGHT_UTC8_MS + 45 * MINUTE),
            Ok(700)
        );
        // A minute that starts before midnight counts on the day it starts.
        let entered = MIDNIGHT_UTC8_MS - 30 * 1_000;
        assert_eq!(
            parking_fee(&parking(10, 0, 1_000), entered, entered + 60_001),
            Ok(20)
        );
    }

    #[test]
    fn parking_refuses_reversed_and_endless_stays() {
        let tariff = parking(10, 0, 500);
        let refused = parking_fee(&tariff, 10, 9).expect_err("reversed");
        assert_eq!(refused.reason, Reason::TariffTimeReversed);
        let refused = parking_fee(&tariff, 0, PARKING_STAY_MS_MAX + 1).expect_err("too long");
        assert_eq!(refused.reason, Reason::TariffStayTooLong);
        assert!(parking_fee(&tariff, 0, PARKING_STAY_MS_MAX).is_ok());
    }

    #[test]
    fn parking_fee_overflow_is_refused() {
        let tariff = parking(AMOUNT_FEN_MAX / 100, 0, AMOUNT_FEN_MAX);
        let refused = parking_fee(&tariff, 0, 2 * MS_PER_DAY).expect_err("two capped days");
        assert_eq!(refused.reason, Reason::TariffOverflow);
    }

    #[test]
    fn metered_fees_round_up_to_the_next_fen() {
        let tariff = metered(MeterUnit::Kwh, 150);
        assert_eq!(metered_fee(&tariff, MeterUnit::Kwh, 0), Ok(0));
        assert_eq!(metered_fee(&tariff, MeterUnit::Kwh, 1), Ok(1));
        assert_eq!(metered_fee(&tariff, MeterUnit::Kwh, 1_000), Ok(150));
        // 42.750 kWh at 1.50 CNY: 6,412.5 fen, rounded up.
        assert_eq!(metered_fee(&tariff, MeterUnit::Kwh, 42_750), Ok(6_413));
        let fuel = metered(MeterUnit::Litre, 789);
        assert_eq!(metered_fee(&fuel, MeterUnit::Litre, 40_000), Ok(31_560));
    }

    #[test]
    fn metered_fees_check_the_unit_and_the_bound() {
        let tariff = metered(MeterUnit::Kwh, 150);
        let refused = metered_fee(&tariff, MeterUnit::Litre, 1_000).expect_err("unit");
        assert_eq!(refused.reason, Reason::TariffUnitMismatch);
        let huge = metered(MeterUnit::Kwh, AMOUNT_FEN_MAX);
        let refused = metered_fee(&huge, MeterUnit::Kwh, i64::MAX).expect_err("overflow");
        assert_eq!(refused.reason, Reason::TariffOverflow);
        let refused = metered_fee(&toll(vec![1]), MeterUnit::Kwh, 1).expect_err("not metered");
        assert_eq!(refused.reason, Reason::TariffMissing);
    }
}
