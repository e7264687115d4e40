//! A namespace of its own on a shared broker: every subject, stream or topic and consumer group
//! of a run (a demo, a load test) carries the run's prefix, so that the run never joins a
//! deployment's consumer group nor reads or writes a deployment's subject, and everything it
//! created can be removed at its end.
//!
//! `txn.submit.oi01` becomes `<prefix>-txn.submit.oi01`: the prefix joins the first token, the
//! family, so that on JetStream the run's subjects live in streams of their own
//! (`<PREFIX>-TXN`) and on Kafka in topics of their own. Records read back carry the subjects
//! the run knows, without the prefix.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::ReplayFrom;
use super::{
    Bus, BusError, BusErrorKind, BusKind, Consumer, ConsumerConfig, Delivery, Follow, Outgoing,
    PublishReceipt, Record, ReplayRequest, ReplayStream, SubjectLayout, SubjectSpec,
    subject_family, validate_subject,
};

/// A bus whose subjects and groups all carry `prefix`.
pub struct NamespacedBus {
    inner: Arc<dyn Bus>,
    prefix: String,
    /// Subjects ensured through this bus, as the broker names them.
    created: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for NamespacedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespacedBus")
            .field("kind", &self.inner.kind())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NamespacedBus {
    /// `inner` seen through the namespace `prefix` (a token of `[a-zA-Z0-9_-]`, e.g.
    /// `demo-1a2b3c4d`).
    pub fn new(inner: Arc<dyn Bus>, prefix: impl Into<String>) -> Result<Self, BusError> {
        let prefix = prefix.into();
        if prefix.is_empty() || prefix.contains('.') {
            return Err(BusError::new(
                BusErrorKind::InvalidSubject,
                format!("namespace {prefix:?}: one token of [a-zA-Z0-9_-]"),
            ));
        }
        validate_subject(&format!("{prefix}.x"))?;
        Ok(NamespacedBus {
            inner,
            prefix,
            created: Mutex::new(BTreeSet::new()),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `subject` as the broker names it.
    pub fn outer(&self, subject: &str) -> String {
        format!("{}-{subject}", self.prefix)
    }

    /// Removes every stream or topic this bus created (on JetStream one per family, with the
    /// run's consumers in it); returns how many were removed.
    pub async fn remove_created(&self) -> Result<usize, BusError> {
        let created: Vec<String> =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        // One per family on JetStream (the stream holds the family); every topic on Kafka.
        let mut families = BTreeSet::new();
        let mut removed = 0;
        for subject in created {
            if self.inner.kind() == BusKind::Nats
                && !families.insert(subject_family(&subject).to_owned())
            {
                continue;
            }
            if self.inner.delete_subject(&subject).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl Bus for NamespacedBus {
    fn kind(&self) -> BusKind {
        self.inner.kind()
    }

    fn disconnected(&self) -> Option<String> {
        self.inner.disconnected()
    }

    async fn ensure_subject(&self, spec: &SubjectSpec) -> Result<(), BusError> {
        let mut outer = spec.clone();
        outer.subject = self.outer(&spec.subject);
        self.inner.ensure_subject(&outer).await?;
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(outer.subject);
        Ok(())
    }

    fn planned_layout(&self, spec: &SubjectSpec) -> SubjectLayout {
        let mut outer = spec.clone();
        outer.subject = self.outer(&spec.subject);
        self.inner.planned_layout(&outer)
    }

    async fn describe_subject(&self, subject: &str) -> Result<Option<SubjectLayout>, BusError> {
        self.inner.describe_subject(&self.outer(subject)).await
    }

    async fn publish(&self, mut message: Outgoing) -> Result<PublishReceipt, BusError> {
        message.subject = self.outer(&message.subject);
        self.inner.publish(message).await
    }

    async fn broker_bench(
        &self,
        plan: &super::bench::BenchPlan,
    ) -> Result<Option<super::bench::BenchRun>, BusError> {
        let mut outer = plan.clone();
        for kind in &mut outer.kinds {
            // Created through the namespace, so that it is removed with the run's subjects.
            self.ensure_subject(
                &SubjectSpec::new(kind.subject.clone()).with_partitions(plan.partitions),
            )
            .await?;
            kind.subject = self.outer(&kind.subject);
        }
        self.inner.broker_bench(&outer).await
    }

    async fn publish_many(&self, messages: Vec<Outgoing>) -> Result<Vec<PublishReceipt>, BusError> {
        let messages = messages
            .into_iter()
            .map(|mut message| {
                message.subject = self.outer(&message.subject);
                message
            })
            .collect();
        self.inner.publish_many(messages).await
    }

    async fn consumer(&self, mut config: ConsumerConfig) -> Result<Box<dyn Consumer>, BusError> {
        config.subject = self.outer(&config.subject);
        config.group = format!("{}-{}", self.prefix, config.group);
        let inner = self.inner.consumer(config).await?;
        Ok(Box::new(NamespacedConsumer {
            inner,
            prefix: self.prefix.clone(),
        }))
    }

    async fn replay(&self, mut request: ReplayRequest) -> Result<Box<dyn ReplayStream>, BusError> {
        request.subject = self.outer(&request.subject);
        let inner = self.inner.replay(request).await?;
        Ok(Box::new(NamespacedReplay {
            inner,
            prefix: self.prefix.clone(),
        }))
    }

    async fn follow_from(
        &self,
        subject: &str,
        from: ReplayFrom,
    ) -> Result<Box<dyn Follow>, BusError> {
        let inner = self.inner.follow_from(&self.outer(subject), from).await?;
        Ok(Box::new(NamespacedFollow {
            inner,
            prefix: self.prefix.clone(),
        }))
    }

    async fn delete_subject(&self, subject: &str) -> Result<bool, BusError> {
        self.inner.delete_subject(&self.outer(subject)).await
    }
}

/// The subject of a record read through the namespace `prefix`, without it.
fn strip_prefix(prefix: &str, record: &mut Record) {
    if let Some(rest) = record
        .subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    {
        record.subject = rest.to_owned();
    }
}

struct NamespacedConsumer {
    inner: Box<dyn Consumer>,
    prefix: String,
}

#[async_trait]
impl Consumer for NamespacedConsumer {
    async fn fetch(&mut self, max: usize, timeout: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut deliveries = self.inner.fetch(max, timeout).await?;
        for delivery in &mut deliveries {
            strip_prefix(&self.prefix, &mut delivery.record);
        }
        Ok(deliveries)
    }
}

struct NamespacedReplay {
    inner: Box<dyn ReplayStream>,
    prefix: String,
}

#[async_trait]
impl ReplayStream for NamespacedReplay {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let mut records = self.inner.next_batch(max).await?;
        for record in &mut records {
            strip_prefix(&self.prefix, record);
        }
        Ok(records)
    }

    fn open_partitions(&self) -> Option<&[u32]> {
        self.inner.open_partitions()
    }
}

struct NamespacedFollow {
    inner: Box<dyn Follow>,
    prefix: String,
}

#[async_trait]
impl Follow for NamespacedFollow {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let mut records = self.inner.next_batch(max, wait).await?;
        for record in &mut records {
            strip_prefix(&self.prefix, record);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{EmbeddedBus, EmbeddedConfig, ReplayFrom};

    fn namespaced() -> (Arc<dyn Bus>, NamespacedBus) {
        let inner: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(EmbeddedConfig::default()));
        let bus = NamespacedBus::new(Arc::clone(&inner), "demo-1a2b").expect("namespace");
        (inner, bus)
    }

    #[test]
    fn prefix_joins_the_family() {
        let (_, bus) = namespaced();
        assert_eq!(bus.outer("txn.submit.oi01"), "demo-1a2b-txn.submit.oi01");
        assert_eq!(
            subject_family(&bus.outer("txn.submit.oi01")),
            "demo-1a2b-txn"
        );
        assert!(NamespacedBus::new(namespaced().0, "a.b").is_err());
        assert!(NamespacedBus::new(namespaced().0, "").is_err());
    }

    #[tokio::test]
    async fn the_run_sees_its_subjects_and_the_broker_only_prefixed_ones() {
        let (inner, bus) = namespaced();
        bus.ensure_subject(&SubjectSpec::new("txn.submit.oi01"))
            .await
            .expect("ensure");
        bus.publish(Outgoing::new("txn.submit.oi01", b"x".to_vec()))
            .await
            .expect("publish");
        let mut consumer = bus
            .consumer(ConsumerConfig::new("txn.submit.oi01", "payer-oi01"))
            .await
            .expect("consumer");
        let deliveries = consumer
            .fetch(10, Duration::from_secs(1))
            .await
            .expect("fetch");
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0].record.subject, "txn.submit.oi01");
        // The broker holds nothing under the plain name.
        assert!(
            inner
                .replay(ReplayRequest {
                    subject: "txn.submit.oi01".to_owned(),
                    from: ReplayFrom::Beginning,
                    until_ms: None,
                })
                .await
                .is_err()
        );
        let mut replay = inner
            .replay(ReplayRequest {
                subject: "demo-1a2b-txn.submit.oi01".to_owned(),
                from: ReplayFrom::Beginning,
                until_ms: None,
            })
            .await
            .expect("replay");
        assert_eq!(replay.next_batch(10).await.expect("records").len(), 1);
        assert_eq!(bus.remove_created().await.expect("removed"), 1);
        assert_eq!(bus.remove_created().await.expect("nothing left"), 0);
    }
}
