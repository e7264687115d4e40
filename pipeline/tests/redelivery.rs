//! A submission the bus delivers again (its ack lost in a broker restart, the member holding it
//! stopped) is not a resubmission: the payer's institution answers it under the first answer's
//! message id, which the bus's duplicate window drops, whereas a terminal that submits again is
//! answered with a new message it can hear.

mod common;

use common::{SimBus, TestNet};
use dcpipe_pipeline::subjects;
use dcpipe_pipeline::terminal::PinEntry;
use dcpipe_schemas::OutcomeStatus;

#[tokio::test]
async fn redelivered_submission_is_answered_under_its_first_message_id() {
    let net = TestNet::provision(2, 4).await;
    let ids = net.institution_ids();
    let payer = net.wallets_of(&ids[0]).remove(0);
    let payee = net.wallets_of(&ids[1]).remove(0);
    let envelope = net.envelope(&payer, &payee, 1_200, PinEntry::WhenRequired);
    let submit_subject = subjects::txn_submit(&ids[0]);
    let result_subject = subjects::txn_result(&ids[0]);
    let mut bus = SimBus::default();
    bus.submit(&envelope);

    // First delivery, decided and answered; the ack is lost, so the same stored message comes
    // again at the same position.
    let index = bus
        .pending()
        .iter()
        .position(|q| q.subject == submit_subject)
        .expect("submitted");
    bus.deliver(&net, &[index], true).await;
    let redelivery = bus.take(&submit_subject).expect("kept");
    bus.drain(&net).await;
    let first_ids: Vec<_> = bus
        .outcome_ids
        .iter()
        .filter(|(subject, _)| subject == &result_subject)
        .cloned()
        .collect();
    assert_eq!(
        first_ids.len(),
        1,
        "one outcome for the payer's institution"
    );
    assert_eq!(
        bus.outcomes_of(&envelope.payment_id)[0].status,
        OutcomeStatus::Completed
    );

    bus.queue_again(redelivery);
    bus.drain(&net).await;
    let after_redelivery: Vec<_> = bus
        .outcome_ids
        .iter()
        .filter(|(subject, _)| subject == &result_subject)
        .cloned()
        .collect();
    assert_eq!(after_redelivery.len(), 2, "the redelivery is answered");
    assert_eq!(
        after_redelivery[1], first_ids[0],
        "under the first answer's message id, so the bus drops it"
    );

    // A terminal that submits again publishes a new message: it hears a new answer.
    bus.submit(&envelope);
    bus.drain(&net).await;
    let after_resubmission: Vec<_> = bus
        .outcome_ids
        .iter()
        .filter(|(subject, _)| subject == &result_subject)
        .cloned()
        .collect();
    assert_eq!(after_resubmission.len(), 3);
    let resubmission_id = after_resubmission[2].1.as_deref().expect("a message id");
    assert!(
        resubmission_id.ends_with("/r0-2"),
        "a new message for the resubmission at offset 2: {resubmission_id}"
    );
    assert!(bus.book.violations(&[]).is_empty());
    net.assert_settled_and_conserved().await;
}
