//! One consumer group on one subject: which messages its members hold, which wait for
//! redelivery, and where new messages start.
//!
//! The state is plain data under the subject's lock, so that the at-least-once rules (ack
//! wait, nak delay, `max_deliver`, `max_in_flight`) are decided in one place and unit-tested
//! without a runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// Identifies one member (one [`crate::bus::Consumer`]) of a group.
pub(super) type ConsumerId = u64;

/// Longest ack wait or nak delay the bus schedules; longer ones are shortened to it so that a
/// deadline can never overflow the clock.
pub(super) const TIMER_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits a member was created with (from its `ConsumerConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemberLimits {
    /// A delivery not settled within this time becomes redeliverable.
    pub(super) ack_wait: Duration,
    /// Deliveries of one message at most.
    pub(super) max_deliver: u32,
    /// Unsettled deliveries the member may hold at once.
    pub(super) max_in_flight: usize,
}

/// Where a delivered but unsettled message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Held by a member until it acks, naks, or the deadline passes.
    InFlight {
        consumer: ConsumerId,
        deadline: Instant,
    },
    /// Naked with a delay: redeliverable from `ready_at`.
    Delayed { ready_at: Instant },
    /// Redeliverable now.
    Ready,
}

#[derive(Debug)]
struct Outstanding {
    /// Deliveries so far.
    delivery_count: u32,
    /// The `max_deliver` of the member that received the last delivery.
    max_deliver: u32,
    holding: Holding,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    in_flight: usize,
    max_in_flight: usize,
}

/// A message handed to a member: its sequence and which delivery this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) seq: u64,
    pub(super) delivery_count: u32,
}

/// What [`Group::take`] handed out, and what it gave up on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Taken {
    pub(super) grants: Vec<Grant>,
    /// Messages dropped because they already had their last allowed delivery.
    pub(super) exhausted: u64,
}

/// What an ack changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckOutcome {
    /// The message was unsettled and now is settled (false for a repeated or late ack).
    pub(super) settled: bool,
    /// The member that held it was at its in-flight limit and now has room.
    pub(super) freed_full_member: bool,
}

/// What a nak changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NakOutcome {
    /// The message will be delivered again (now, or after the delay).
    Redeliver { freed_full_member: bool },
    /// That was its last allowed delivery: the group settles it without delivering again.
    Exhausted { freed_full_member: bool },
    /// The delivery was no longer held (acked, expired or redelivered since): nothing changed.
    Stale,
}

/// A consumer group's position and unsettled messages on one subject.
#[derive(Debug)]
pub(super) struct Group {
    /// The next sequence never delivered to this group.
    cursor: u64,
    /// Delivered but not settled, by sequence.
    outstanding: BTreeMap<u64, Outstanding>,
    /// When each in-flight delivery expires and each delayed one becomes ready.
    timers: BTreeSet<(Instant, u64)>,
    /// Redeliverable now, lowest sequence first.
    ready: BTreeSet<u64>,
    members: HashMap<ConsumerId, Member>,
}

impl Group {
    /// A group whose first delivery will be `cursor`.
    pub(super) fn new(cursor: u64) -> Self {
        Group {
            cursor,
            outstanding: BTreeMap::new(),
            timers: BTreeSet::new(),
            ready: BTreeSet::new(),
            members: HashMap::new(),
        }
    }

    /// Adds a member.
    pub(super) fn join(&mut self, consumer: ConsumerId, max_in_flight: usize) {
        self.members.insert(
            consumer,
            Member {
                in_flight: 0,
                max_in_flight,
            },
        );
    }

    /// Removes a member. What it still holds is redelivered when its ack wait passes, as on a
    /// broker, since its deliveries may still be acked by whoever holds them.
    pub(super) fn leave(&mut self, consumer: ConsumerId) {
        self.members.remove(&consumer);
    }

    /// The lowest sequence this group has not settled: messages below it may be trimmed.
    pub(super) fn floor(&self) -> u64 {
        self.outstanding
            .first_key_value()
            .map_or(self.cursor, |(seq, _)| *seq)
    }

    /// When the next in-flight delivery expires or delayed one becomes ready.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Unsettled deliveries `consumer` holds.
    #[cfg(test)]
    pub(super) fn in_flight(&self, consumer: ConsumerId) -> usize {
        self.members.get(&consumer).map_or(0, |m| m.in_flight)
    }

    /// Applies the timers due at `now`: expired deliveries become redeliverable (or are
    /// settled if that was their last allowed delivery), delayed ones become ready. Returns
    /// how many were settled as exhausted.
    pub(super) fn expire(&mut self, now: Instant) -> u64 {
        let mut exhausted = 0;
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.outstanding.get_mut(&seq) else {
                continue;
            };
            match entry.holding {
                Holding::InFlight { consumer, deadline } if deadline == at => {
                    release(&mut self.members, consumer);
                    if entry.delivery_count >= entry.max_deliver {
                        self.outstanding.remove(&seq);
                        exhausted += 1;
                    } else {
                        entry.holding = Holding::Ready;
                        self.ready.insert(seq);
                    }
                }
                Holding::Delayed { ready_at } if ready_at == at => {
                    entry.holding = Holding::Ready;
                    self.ready.insert(seq);
                }
                _ => {}
            }
        }
        exhausted
    }

    /// Hands `consumer` up to `max` messages within its in-flight room: redeliveries first
    /// (lowest sequence first), then new messages below `end_seq`. Call [`Group::expire`]
    /// first so that due redeliveries are included.
    pub(super) fn take(
        &mut self,
        consumer: ConsumerId,
        limits: &MemberLimits,
        max: usize,
        end_seq: u64,
        now: Instant,
    ) -> Taken {
        let mut taken = Taken::default();
        let Some(member) = self.members.get(&consumer).copied() else {
            return taken;
        };
        let wanted = max.min(member.max_in_flight.saturating_sub(member.in_flight));
        let deadline = now + limits.ack_wait.min(TIMER_MAX);
        while taken.grants.len() < wanted {
            let Some(seq) = self.ready.pop_first() else {
                break;
            };
            let Some(entry) = self.outstanding.get_mut(&seq) else {
                continue;
            };
            // Members of one group may disagree on max_deliver: the stricter one wins here.
            if entry.delivery_count >= limits.max_deliver {
                self.outstanding.remove(&seq);
                taken.exhausted += 1;
                continue;
            }
            entry.delivery_count += 1;
            entry.max_deliver = limits.max_deliver;
            entry.holding = Holding::InFlight { consumer, deadline };
            self.timers.insert((deadline, seq));
            taken.grants.push(Grant {
                seq,
                delivery_count: entry.delivery_count,
            });
        }
        while taken.grants.len() < wanted && self.cursor < end_seq {
            let seq = self.cursor;
            self.cursor += 1;
            self.outstanding.insert(
                seq,
                Outstanding {
                    delivery_count: 1,
                    max_deliver: limits.max_deliver,
                    holding: Holding::InFlight { consumer, deadline },
                },
            );
            self.timers.insert((deadline, seq));
            taken.grants.push(Grant {
                seq,
                delivery_count: 1,
            });
        }
        if let Some(member) = self.members.get_mut(&consumer) {
            member.in_flight += taken.grants.len();
        }
        taken
    }

    /// Settles `seq` whoever holds it: a late ack (after the ack wait passed) still counts,
    /// since the work was done.
    pub(super) fn ack(&mut self, seq: u64) -> AckOutcome {
        let Some(entry) = self.outstanding.remove(&seq) else {
            return AckOutcome {
                settled: false,
                freed_full_member: false,
            };
        };
        let freed_full_member = match entry.holding {
            Holding::InFlight { consumer, deadline } => {
                self.timers.remove(&(deadline, seq));
                release(&mut self.members, consumer)
            }
            Holding::Delayed { ready_at } => {
                self.timers.remove(&(ready_at, seq));
                false
            }
            Holding::Ready => {
                self.ready.remove(&seq);
                false
            }
        };
        AckOutcome {
            settled: true,
            freed_full_member,
        }
    }

    /// Gives back delivery `delivery_count` of `seq` for redelivery after `delay`. Only the
    /// current holder can: a nak of an older delivery changes nothing.
    pub(super) fn nak(
        &mut self,
        seq: u64,
        delivery_count: u32,
        delay: Duration,
        now: Instant,
    ) -> NakOutcome {
        let Some(entry) = self.outstanding.get_mut(&seq) else {
            return NakOutcome::Stale;
        };
        let Holding::InFlight { consumer, deadline } = entry.holding else {
            return NakOutcome::Stale;
        };
        if entry.delivery_count != delivery_count {
            return NakOutcome::Stale;
        }
        self.timers.remove(&(deadline, seq));
        let freed_full_member = release(&mut self.members, consumer);
        if entry.delivery_count >= entry.max_deliver {
            self.outstanding.remove(&seq);
            return NakOutcome::Exhausted { freed_full_member };
        }
        if delay.is_zero() {
            entry.holding = Holding::Ready;
            self.ready.insert(seq);
        } else {
            let ready_at = now + delay.min(TIMER_MAX);
            entry.holding = Holding::Delayed { ready_at };
            self.timers.insert((ready_at, seq));
        }
        NakOutcome::Redeliver { freed_full_member }
    }
}

/// Frees one in-flight slot of `consumer`; true when it was at its limit before.
fn release(members: &mut HashMap<ConsumerId, Member>, consumer: ConsumerId) -> bool {
    let Some(member) = members.get_mut(&consumer) else {
        return false;
    };
    let was_full = member.in_flight >= member.max_in_flight;
    member.in_flight = member.in_flight.saturating_sub(1);
    was_full
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK_WAIT: Duration = Duration::from_secs(1);
    const A: ConsumerId = 1;
    const B: ConsumerId = 2;

    fn limits(max_deliver: u32, max_in_flight: usize) -> MemberLimits {
        MemberLimits {
            ack_wait: ACK_WAIT,
            max_deliver,
            max_in_flight,
        }
    }

    /// A group starting at sequence 1 with members A and B.
    fn group_of_two(max_in_flight: usize) -> Group {
        let mut group = Group::new(1);
        group.join(A, max_in_flight);
        group.join(B, max_in_flight);
        group
    }

    fn seqs(taken: &Taken) -> Vec<(u64, u32)> {
        taken
            .grants
            .iter()
            .map(|g| (g.seq, g.delivery_count))
            .collect()
    }

    #[test]
    fn members_never_receive_the_same_new_message() {
        let mut group = group_of_two(10);
        let now = Instant::now();
        let a = group.take(A, &limits(5, 10), 3, 6, now);
        let b = group.take(B, &limits(5, 10), 3, 6, now);
        assert_eq!(seqs(&a), vec![(1, 1), (2, 1), (3, 1)]);
        assert_eq!(seqs(&b), vec![(4, 1), (5, 1)]);
    }

    #[test]
    fn a_member_holds_no_more_than_its_in_flight_limit() {
        let mut group = group_of_two(2);
        let now = Instant::now();
        assert_eq!(group.take(A, &limits(5, 2), 10, 100, now).grants.len(), 2);
        assert!(group.take(A, &limits(5, 2), 10, 100, now).grants.is_empty());
        let outcome = group.ack(1);
        assert!(outcome.settled && outcome.freed_full_member);
        assert_eq!(
            seqs(&group.take(A, &limits(5, 2), 10, 100, now)),
            vec![(3, 1)]
        );
    }

    #[test]
    fn an_expired_delivery_goes_to_another_member_with_a_higher_count() {
        let mut group = group_of_two(10);
        let start = Instant::now();
        group.take(A, &limits(5, 10), 1, 2, start);
        assert_eq!(group.expire(start + ACK_WAIT), 0);
        assert_eq!(group.in_flight(A), 0);
        let b = group.take(B, &limits(5, 10), 1, 2, start + ACK_WAIT);
        assert_eq!(seqs(&b), vec![(1, 2)]);
    }

    #[test]
    fn an_expired_last_delivery_is_settled_not_redelivered() {
        let mut group = group_of_two(10);
        let start = Instant::now();
        group.take(A, &limits(1, 10), 1, 2, start);
        assert_eq!(group.expire(start + ACK_WAIT), 1);
        assert!(
            group
                .take(A, &limits(1, 10), 1, 2, start + ACK_WAIT)
                .grants
                .is_empty()
        );
        assert_eq!(group.floor(), 2);
    }

    #[test]
    fn a_delayed_nak_is_redelivered_only_after_its_delay() {
        let mut group = group_of_two(10);
        let start = Instant::now();
        group.take(A, &limits(5, 10), 1, 2, start);
        let delay = Duration::from_millis(500);
        assert_eq!(
            group.nak(1, 1, delay, start),
            NakOutcome::Redeliver {
                freed_full_member: false
            }
        );
        group.expire(start + delay / 2);
        assert!(group.take(A, &limits(5, 10), 1, 2, start).grants.is_empty());
        group.expire(start + delay);
        assert_eq!(
            seqs(&group.take(A, &limits(5, 10), 1, 2, start + delay)),
            vec![(1, 2)]
        );
    }

    #[test]
    fn a_nak_of_the_last_allowed_delivery_settles_it() {
        let mut group = group_of_two(10);
        let now = Instant::now();
        group.take(A, &limits(2, 10), 1, 2, now);
        group.nak(1, 1, Duration::ZERO, now);
        group.take(A, &limits(2, 10), 1, 2, now);
        assert_eq!(
            group.nak(1, 2, Duration::ZERO, now),
            NakOutcome::Exhausted {
                freed_full_member: false
            }
        );
        assert!(group.take(A, &limits(2, 10), 1, 2, now).grants.is_empty());
    }

    #[test]
    fn a_nak_of_an_older_delivery_changes_nothing() {
        let mut group = group_of_two(10);
        let start = Instant::now();
        group.take(A, &limits(5, 10), 1, 2, start);
        group.expire(start + ACK_WAIT);
        group.take(B, &limits(5, 10), 1, 2, start + ACK_WAIT);
        assert_eq!(
            group.nak(1, 1, Duration::ZERO, start + ACK_WAIT),
            NakOutcome::Stale
        );
        assert_eq!(group.in_flight(B), 1);
    }

    #[test]
    fn a_late_ack_settles_a_message_waiting_for_redelivery() {
        let mut group = group_of_two(10);
        let start = Instant::now();
        group.take(A, &limits(5, 10), 1, 2, start);
        group.expire(start + ACK_WAIT);
        assert!(group.ack(1).settled);
        assert!(
            group
                .take(B, &limits(5, 10), 1, 2, start + ACK_WAIT)
                .grants
                .is_empty()
        );
        assert!(!group.ack(1).settled);
    }

    #[test]
    fn floor_is_the_lowest_unsettled_sequence() {
        let mut group = group_of_two(10);
        let now = Instant::now();
        group.take(A, &limits(5, 10), 3, 4, now);
        assert_eq!(group.floor(), 1);
        group.ack(2);
        assert_eq!(group.floor(), 1);
        group.ack(1);
        assert_eq!(group.floor(), 3);
        group.ack(3);
        assert_eq!(group.floor(), 4);
    }
}
