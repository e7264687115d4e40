//! The result of a load test: the JSON report dashboards and CI read, and the table printed on
//! the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::ceiling::{BrokerCeiling, BusCeiling, CryptoCeiling};
use crate::error::{LoadTestError, LoadTestErrorKind};
use crate::measure::{Percentiles, SeriesPoint};
use crate::ramp::StepResult;

/// Shares of the synthetic traffic, as configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixReport {
    /// Certificates: `p256`, `sm2` or `mixed`.
    pub algorithm: String,
    /// Payments between two institutions.
    pub interbank_share: f64,
    /// Payments sent from the hot wallets.
    pub hot_share: f64,
    /// How many wallets are hot.
    pub hot_wallets: usize,
    /// Payments above the password-free limit (with a PIN proof).
    pub large_share: f64,
    /// Submissions with a forged payer signature.
    pub bad_share: f64,
    /// Repeated submissions.
    pub duplicate_share: f64,
    /// Conflicting submissions (an earlier id, other content).
    pub conflict_share: f64,
}

/// A report as pretty JSON.
pub(crate) fn to_json(report: &impl Serialize) -> Result<String, LoadTestError> {
    serde_json::to_string_pretty(report)
        .map_err(|e| LoadTestError::new(LoadTestErrorKind::Output, format!("report: {e}")))
}

/// Writes a report as pretty JSON to `path`.
pub(crate) fn write_json(report: &impl Serialize, path: &Path) -> Result<(), LoadTestError> {
    let json = to_json(report)?;
    std::fs::write(path, json + "\n").map_err(|e| {
        LoadTestError::new(
            LoadTestErrorKind::Output,
            format!("writing {}: {e}", path.display()),
        )
    })
}

/// Where the money is at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MoneyCheck {
    /// Opening total of all wallets, fen.
    pub opening_fen: i64,
    /// Total of all balances at the end, fen.
    pub balance_fen: i64,
    /// Still reserved, fen.
    pub held_fen: i64,
    /// Credited but not final, fen.
    pub pending_credit_fen: i64,
    /// Balances equal the opening total and nothing is in flight.
    pub conserved: bool,
}

impl MoneyCheck {
    /// The check of a reading of the network's money.
    pub fn of(money: &dcpipe_pipeline::network::MoneyReport) -> Self {
        MoneyCheck {
            opening_fen: money.opening_fen,
            balance_fen: money.balance_fen,
            held_fen: money.held_fen,
            pending_credit_fen: money.pending_credit_fen,
            conserved: money.is_settled_and_conserved(),
        }
    }

    /// Why the run is invalid, if money is not conserved.
    pub fn failure(&self) -> Option<String> {
        (!self.conserved).then(|| {
            format!(
                "money not conserved: opening {} fen, now {} fen, {} held, {} pending",
                self.opening_fen, self.balance_fen, self.held_fen, self.pending_credit_fen
            )
        })
    }
}

/// The ramp's steps and what they found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampReport {
    /// Every step, in order.
    pub steps: Vec<StepResult>,
    /// Highest rate of a sustainable step; `None` if even the first was not.
    pub highest_sustainable_rate: Option<u32>,
    /// The step at a share of the highest sustainable rate, run after the ramp.
    pub confirm: Option<StepResult>,
}

/// Everything a load test reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `open`, `ramp` or `closed`.
    pub mode: String,
    /// The bus URL (no credentials).
    pub bus: String,
    /// `sqlite` or `postgres`.
    pub ledger: String,
    /// Institutions.
    pub institutions: usize,
    /// Wallets.
    pub wallets: usize,
    /// Seed of the traffic.
    pub seed: u64,
    /// Shape of the traffic.
    pub mix: MixReport,
    /// Payments in flight (closed mode).
    pub concurrency: Option<usize>,
    /// Load offered for, seconds (a ramp: all its steps).
    pub duration_s: f64,
    /// Trimmed at the start, seconds.
    pub warmup_s: f64,
    /// Trimmed at the end, seconds.
    pub cooldown_s: f64,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Cores the run used.
    pub cores: usize,
    /// Payments per second the signature work allows per core.
    pub crypto_per_core: f64,
    /// Payments per second the signature work allows on all cores.
    pub crypto_ceiling: f64,
    /// Envelopes per second one core of the in-process synthetic terminals signs.
    pub producer_per_core: f64,
    /// The crypto ceiling when the same cores also sign the envelopes (producers in this
    /// process, as by default).
    pub crypto_ceiling_with_producer: f64,
    /// Payments per second dcpipe's bus layer carries with no processing.
    pub bus_ceiling: f64,
    /// Payments per second the broker carries with its client used at its best; 0 on the
    /// embedded bus (no broker).
    pub broker_ceiling: f64,
    /// Details of the crypto ceiling.
    pub crypto: CryptoCeiling,
    /// Details of the bus ceiling.
    pub bus_limit: BusCeiling,
    /// Details of the broker ceiling (none on the embedded bus).
    pub broker_limit: Option<BrokerCeiling>,
    /// Submissions per second offered in the measured window.
    pub offered_rate: f64,
    /// Answers per second in the measured window.
    pub achieved_rate: f64,
    /// Achieved over crypto ceiling.
    pub ratio_to_crypto_ceiling: f64,
    /// Achieved over bus ceiling.
    pub ratio_to_bus_ceiling: f64,
    /// Achieved over broker ceiling (0 without one).
    pub ratio_to_broker_ceiling: f64,
    /// Achieved over the lower of the crypto ceiling and the broker ceiling (the crypto ceiling
    /// alone without a broker).
    pub ratio_to_lower_ceiling: f64,
    /// End-to-end latency, submission intended to final outcome observed, ms.
    pub latency_ms: Percentiles,
    /// Largest resident memory while the load ran, MiB.
    pub rss_mb_max: f64,
    /// Resident memory when the load started (network provisioned, ceilings measured), MiB.
    pub rss_mb_start: f64,
    /// CPU this process used while the load ran, in cores (2.0: both cores busy throughout).
    pub cpu_cores_used: f64,
    /// The machine's one-minute load average when the load started and when it ended: above
    /// the core count, other work competed with the run.
    pub load_average: (f64, f64),
    /// Submissions published.
    pub submitted: u64,
    /// Distinct submissions.
    pub distinct: u64,
    /// Submissions answered.
    pub answered: u64,
    /// Submissions by answer.
    pub counts_by_outcome: BTreeMap<String, u64>,
    /// Broken invariants, counted.
    pub violations: usize,
    /// The first few, described.
    pub violation_examples: Vec<String>,
    /// The money check.
    pub money: MoneyCheck,
    /// Every submission answered exactly once, counts adding up, money conserved.
    pub valid: bool,
    /// Why not, when not valid.
    pub invalid_reasons: Vec<String>,
    /// The ramp (ramp mode).
    pub ramp: Option<RampReport>,
    /// Throughput and latency per second.
    pub series: Vec<SeriesPoint>,
    /// The command that produced this report.
    pub command_line: String,
    /// When the load started, ms since the epoch.
    pub started_at_ms: i64,
    /// dcpipe's version.
    pub version: String,
}

/// Keys every report must carry: dashboards and CI read them.
pub const REQUIRED_KEYS: &[&str] = &[
    "offered_rate",
    "achieved_rate",
    "crypto_ceiling",
    "bus_ceiling",
    "ratio_to_crypto_ceiling",
    "ratio_to_bus_ceiling",
    "broker_ceiling",
    "ratio_to_broker_ceiling",
    "ratio_to_lower_ceiling",
    "latency_ms",
    "rss_mb_max",
    "counts_by_outcome",
    "valid",
    "mode",
    "bus",
    "ledger",
    "duration_s",
    "cores",
    "crypto_per_core",
    "mix",
    "command_line",
];

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, LoadTestError> {
        to_json(self)
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadTestError> {
        write_json(self, path)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "mode {} · bus {} · ledger {} · {} · {} institutions, {} wallets · {} cores",
            self.mode,
            self.bus,
            self.ledger,
            self.mix.algorithm,
            self.institutions,
            self.wallets,
            self.cores
        );
        let _ = writeln!(out, "{:<28}{:>12}", "", "payments/s");
        let _ = writeln!(out, "{:<28}{:>12.0}", "offered", self.offered_rate);
        let _ = writeln!(out, "{:<28}{:>12.0}", "achieved", self.achieved_rate);
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}   ratio {:.2}  ({:.0}/core × {})",
            "crypto ceiling",
            self.crypto_ceiling,
            self.ratio_to_crypto_ceiling,
            self.crypto_per_core,
            self.cores
        );
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}   ratio {:.2}  (terminals sign {:.0}/core in this process)",
            "crypto ceiling + terminals",
            self.crypto_ceiling_with_producer,
            crate::ceiling::ratio(self.achieved_rate, self.crypto_ceiling_with_producer),
            self.producer_per_core
        );
        let _ = writeln!(
            out,
            "{:<28}{:>12.0}   ratio {:.2}  ({:.0} msgs/s ÷ {:.1} per payment, dcpipe's bus layer)",
            "bus ceiling",
            self.bus_ceiling,
            self.ratio_to_bus_ceiling,
            self.bus_limit.message_rate,
            self.bus_limit.messages_per_payment
        );
        if let Some(broker) = &self.broker_limit {
            let _ = writeln!(
                out,
                "{:<28}{:>12.0}   ratio {:.2}  ({:.0} msgs/s ÷ {:.1} per payment, the broker's client at its best)",
                "broker ceiling",
                self.broker_ceiling,
                self.ratio_to_broker_ceiling,
                broker.message_rate,
                broker.messages_per_payment
            );
        }
        let _ = writeln!(
            out,
            "{:<28}{:>12}   ratio {:.2}",
            "lower of crypto and broker", "", self.ratio_to_lower_ceiling
        );
        let _ = writeln!(
            out,
            "latency ms (measured {:.0} s)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} payments)",
            self.measured_s, l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        );
        let _ = writeln!(
            out,
            "memory MiB                  start {:.0}  max {:.0}",
            self.rss_mb_start, self.rss_mb_max
        );
        let _ = writeln!(
            out,
            "cpu {:.2} cores busy while loaded · machine load average {:.2} → {:.2}",
            self.cpu_cores_used, self.load_average.0, self.load_average.1
        );
        let _ = writeln!(
            out,
            "submitted {}  distinct {}  answered {}",
            self.submitted, self.distinct, self.answered
        );
        for (outcome, count) in &self.counts_by_outcome {
            let _ = writeln!(out, "  {outcome:<30}{count:>10}");
        }
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(out, "ramp steps");
            for step in ramp.steps.iter().chain(ramp.confirm.iter()) {
                let _ = writeln!(
                    out,
                    "  {:>7}/s offered {:>8.0} achieved {:>8.0} p99 {:>8.1} ms  {}",
                    step.rate,
                    step.offered_rate,
                    step.achieved_rate,
                    step.latency_ms.p99,
                    if step.sustainable {
                        "sustainable".to_owned()
                    } else {
                        format!("not sustainable: {}", step.reasons.join("; "))
                    }
                );
            }
            match ramp.highest_sustainable_rate {
                Some(rate) => {
                    let _ = writeln!(out, "highest sustainable rate {rate}/s");
                }
                None => {
                    let _ = writeln!(out, "no step was sustainable");
                }
            }
        }
        let _ = writeln!(
            out,
            "money {}: opening {} fen, now {} fen, held {}, pending {}",
            if self.money.conserved {
                "conserved"
            } else {
                "NOT conserved"
            },
            self.money.opening_fen,
            self.money.balance_fen,
            self.money.held_fen,
            self.money.pending_credit_fen
        );
        if self.valid {
            let _ = writeln!(out, "run VALID");
        } else {
            let _ = writeln!(out, "run INVALID: {}", self.invalid_reasons.join("; "));
            for example in &self.violation_examples {
                let _ = writeln!(out, "  {example}");
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ceiling::{CryptoOpsPerPayment, MessageKind};

    pub(crate) fn sample_report() -> Report {
        Report {
            mode: "open".into(),
            bus: "embedded".into(),
            ledger: "sqlite".into(),
            institutions: 4,
            wallets: 1000,
            seed: 1,
            mix: MixReport {
                algorithm: "p256".into(),
                interbank_share: 0.8,
                hot_share: 0.5,
                hot_wallets: 20,
                large_share: 0.02,
                bad_share: 0.0,
                duplicate_share: 0.0,
                conflict_share: 0.0,
            },
            concurrency: None,
            duration_s: 30.0,
            warmup_s: 5.0,
            cooldown_s: 2.0,
            measured_s: 23.0,
            cores: 2,
            crypto_per_core: 1000.0,
            crypto_ceiling: 2000.0,
            producer_per_core: 8000.0,
            crypto_ceiling_with_producer: 1600.0,
            bus_ceiling: 20_000.0,
            broker_ceiling: 40_000.0,
            crypto: CryptoCeiling {
                payments_per_s: 2000.0,
                per_core: 1000.0,
                cores: 2,
                ops_per_payment: CryptoOpsPerPayment {
                    sign: 3.0,
                    verify: 5.8,
                    chain: 6.8,
                },
                payments: 4000,
                seconds: 2.0,
            },
            bus_limit: BusCeiling {
                payments_per_s: 20_000.0,
                message_rate: 112_000.0,
                messages_per_payment: 5.6,
                messages: vec![MessageKind {
                    name: "txn.submit",
                    bytes: 1200,
                    per_payment: 1.0,
                }],
                published: 224_000,
                seconds: 2.0,
            },
            broker_limit: Some(BrokerCeiling {
                payments_per_s: 40_000.0,
                message_rate: 224_000.0,
                publish_rate: 230_000.0,
                messages_per_payment: 5.6,
                published: 448_000,
                seconds: 2.0,
                acks_in_flight: 4096,
                fetch_batch: 1000,
                method: "async publishes".into(),
            }),
            offered_rate: 1000.0,
            achieved_rate: 998.0,
            ratio_to_crypto_ceiling: 0.499,
            ratio_to_bus_ceiling: 0.0499,
            ratio_to_broker_ceiling: 0.02495,
            ratio_to_lower_ceiling: 0.499,
            latency_ms: Percentiles {
                p50: 5.0,
                p90: 8.0,
                p99: 20.0,
                p999: 30.0,
                max: 40.0,
                samples: 23_000,
            },
            rss_mb_max: 80.0,
            rss_mb_start: 40.0,
            cpu_cores_used: 1.9,
            load_average: (2.0, 2.1),
            submitted: 30_000,
            distinct: 30_000,
            answered: 30_000,
            counts_by_outcome: BTreeMap::from([("COMPLETED".to_owned(), 30_000)]),
            violations: 0,
            violation_examples: Vec::new(),
            money: MoneyCheck {
                opening_fen: 1,
                balance_fen: 1,
                held_fen: 0,
                pending_credit_fen: 0,
                conserved: true,
            },
            valid: true,
            invalid_reasons: Vec::new(),
            ramp: None,
            series: Vec::new(),
            command_line: "dcpipe loadtest".into(),
            started_at_ms: 0,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn the_json_report_has_every_required_key() {
        let json = sample_report().to_json().expect("json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("parses");
        for key in REQUIRED_KEYS {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(
                value["latency_ms"].get(key).is_some(),
                "missing latency_ms.{key}"
            );
        }
        assert_eq!(value["counts_by_outcome"]["COMPLETED"], 30_000);
        assert_eq!(value["valid"], true);
    }

    #[test]
    fn the_table_shows_both_bus_ceilings() {
        let table = sample_report().table();
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in {table}"))
                .to_owned()
        };
        assert!(line("bus ceiling").contains("20000"), "{table}");
        assert!(line("bus ceiling").contains("bus layer"), "{table}");
        assert!(line("broker ceiling").contains("40000"), "{table}");
        assert!(line("broker ceiling").contains("ratio 0.02"), "{table}");
        assert!(
            line("lower of crypto and broker").contains("ratio 0.50"),
            "{table}"
        );
        let mut embedded = sample_report();
        embedded.broker_limit = None;
        assert!(!embedded.table().contains("broker ceiling"), "{table}");
    }

    #[test]
    fn the_table_names_an_invalid_run_and_why() {
        let mut report = sample_report();
        report.valid = false;
        report.invalid_reasons = vec!["3 submissions unanswered".into()];
        let table = report.table();
        assert!(
            table.contains("run INVALID: 3 submissions unanswered"),
            "{table}"
        );
    }
}
