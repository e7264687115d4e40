//! The ramp's decision: is a step's rate sustainable, and which is the highest that was.
//!
//! A step is sustainable when the pipeline kept up (achieved at least a share of the offered
//! rate), answered fast enough (p99 under a bound) and did not leave a growing backlog (few
//! payments still unanswered when the step's sending ended).

use serde::Serialize;

use crate::config::SustainCriterion;
use crate::measure::Percentiles;

/// What one step measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepResult {
    /// Rate the step was configured to offer.
    pub rate: u32,
    /// Rate it did offer over its measured part.
    pub offered_rate: f64,
    /// Answers per second over its measured part.
    pub achieved_rate: f64,
    /// Latency of its payments, ms.
    pub latency_ms: Percentiles,
    /// Submissions of the step.
    pub submitted: u64,
    /// Submissions not yet answered when the step stopped sending.
    pub backlog_at_end: u64,
    /// The verdict.
    pub sustainable: bool,
    /// Why not, when not.
    pub reasons: Vec<String>,
}

/// Judges a step against `criterion`; returns whether it is sustainable and, if not, why.
pub fn judge(
    criterion: &SustainCriterion,
    offered_rate: f64,
    achieved_rate: f64,
    latency: &Percentiles,
    submitted: u64,
    backlog_at_end: u64,
) -> (bool, Vec<String>) {
    let mut reasons = Vec::new();
    let ratio = if offered_rate > 0.0 {
        achieved_rate / offered_rate
    } else {
        0.0
    };
    if ratio < criterion.achieved_ratio_min {
        reasons.push(format!(
            "achieved {achieved_rate:.0}/s is {:.1}% of offered {offered_rate:.0}/s (at least {:.1}% needed)",
            ratio * 100.0,
            criterion.achieved_ratio_min * 100.0
        ));
    }
    if latency.samples == 0 || latency.p99 > criterion.p99_ms_max {
        reasons.push(format!(
            "p99 {:.1} ms over {} payments (at most {:.1} ms)",
            latency.p99, latency.samples, criterion.p99_ms_max
        ));
    }
    let backlog_ratio = if submitted > 0 {
        backlog_at_end as f64 / submitted as f64
    } else {
        1.0
    };
    if backlog_ratio > criterion.backlog_ratio_max {
        reasons.push(format!(
            "{backlog_at_end} of {submitted} payments unanswered at the step's end ({:.1}%, at most {:.1}%)",
            backlog_ratio * 100.0,
            criterion.backlog_ratio_max * 100.0
        ));
    }
    (reasons.is_empty(), reasons)
}

/// The highest rate of the sustainable steps that precede the first unsustainable one.
pub fn highest_sustainable(steps: &[StepResult]) -> Option<u32> {
    steps
        .iter()
        .take_while(|s| s.sustainable)
        .map(|s| s.rate)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p99: f64) -> Percentiles {
        Percentiles {
            p50: p99 / 4.0,
            p90: p99 / 2.0,
            p99,
            p999: p99,
            max: p99,
            samples: 1000,
        }
    }

    fn step(rate: u32, sustainable: bool) -> StepResult {
        StepResult {
            rate,
            offered_rate: f64::from(rate),
            achieved_rate: f64::from(rate),
            latency_ms: latency(10.0),
            submitted: 1000,
            backlog_at_end: 0,
            sustainable,
            reasons: Vec::new(),
        }
    }

    #[test]
    fn a_step_that_keeps_up_is_sustainable() {
        let (ok, reasons) = judge(
            &SustainCriterion::default(),
            1000.0,
            990.0,
            &latency(20.0),
            10_000,
            15,
        );
        assert!(ok, "{reasons:?}");
    }

    #[test]
    fn a_step_below_the_achieved_share_is_not_sustainable() {
        let (ok, reasons) = judge(
            &SustainCriterion::default(),
            1000.0,
            900.0,
            &latency(20.0),
            10_000,
            15,
        );
        assert!(!ok);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("achieved"), "{reasons:?}");
    }

    #[test]
    fn a_step_with_p99_above_the_bound_is_not_sustainable() {
        let criterion = SustainCriterion {
            p99_ms_max: 50.0,
            ..SustainCriterion::default()
        };
        let (ok, reasons) = judge(&criterion, 1000.0, 1000.0, &latency(51.0), 10_000, 15);
        assert!(!ok);
        assert!(reasons[0].contains("p99"), "{reasons:?}");
    }

    #[test]
    fn a_step_leaving_a_backlog_is_not_sustainable() {
        let (ok, reasons) = judge(
            &SustainCriterion::default(),
            1000.0,
            1000.0,
            &latency(20.0),
            10_000,
            600,
        );
        assert!(!ok);
        assert!(reasons[0].contains("unanswered"), "{reasons:?}");
    }

    #[test]
    fn a_step_without_samples_is_not_sustainable() {
        let (ok, _) = judge(
            &SustainCriterion::default(),
            1000.0,
            1000.0,
            &Percentiles::default(),
            10_000,
            0,
        );
        assert!(!ok);
    }

    #[test]
    fn highest_sustainable_stops_at_the_first_failure() {
        let steps = vec![
            step(100, true),
            step(200, true),
            step(300, false),
            step(400, true),
        ];
        assert_eq!(highest_sustainable(&steps), Some(200));
    }

    #[test]
    fn no_sustainable_step_gives_none() {
        assert_eq!(highest_sustainable(&[step(100, false)]), None);
    }
}
