//! TLS and credentials towards both brokers are configuration that passes through: each test
//! starts a real server that demands them (nats-server with an `authorization` or `tls` block,
//! tansu with SASL), connects with [`NatsOptions`] or [`KafkaOptions`], and proves that the right
//! settings carry a message end to end while wrong or missing ones are refused with a typed
//! error, within a bounded time, without the secret in the error's text, in `Debug` output or in
//! anything logged. The PostgreSQL ledger's TLS (`sslmode=require&sslrootcert=…`) is proved
//! the same way against a server started with a certificate of the same test CA.

use std::fmt::Debug;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use dcpipe_connectors::bus::{
    Bus, BusError, BusErrorKind, BusOptions, Consumer, ConsumerConfig, Delivery, KafkaBus,
    KafkaOptions, NatsBus, NatsOptions, Outgoing, SubjectSpec,
};
use dcpipe_connectors::ledger::{
    LedgerErrorKind, LedgerOptions, LedgerUrl, WalletAccount, WalletLimits, open_ledger,
};
use dcpipe_connectors::testkit::{NatsServer, PostgresServer, TansuServer, fetch_until};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::time::Instant;

/// How long a test waits for what must happen (a message consumed).
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a refused connection may take to fail: the buses' own connect and metadata
/// timeouts (5 s for NATS, 10 s for Kafka) with room for a loaded machine.
const REFUSAL_MAX: Duration = Duration::from_secs(25);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A secret no other test uses, so that finding it in shared output means this test leaked it.
fn secret(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

fn unique_subject(name: &str) -> String {
    format!("t{}.{name}", uuid::Uuid::new_v4().simple())
}

/// A string quoted for nats-server's configuration format.
fn quoted(text: impl AsRef<str>) -> String {
    format!("{:?}", text.as_ref())
}

fn path_quoted(path: &Path) -> String {
    quoted(path.display().to_string())
}

/// A test CA with a server certificate for 127.0.0.1 and localhost and a client certificate,
/// written as PEM files to a temporary directory.
struct Pki {
    dir: TempDir,
    ca_file: PathBuf,
    server_cert_file: PathBuf,
    server_key_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dcpipe-pki-")
            .tempdir()
            .expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dcpipe test broker CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let ca_file = dir.path().join("ca.pem");
        fs::write(&ca_file, ca.pem()).expect("write CA");
        let (server_cert_file, server_key_file) = issue(
            &ca,
            dir.path(),
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert_file, client_key_file) = issue(
            &ca,
            dir.path(),
            "client",
            &["dcpipe-worker"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            dir,
            ca_file,
            server_cert_file,
            server_key_file,
            client_cert_file,
            client_key_file,
        }
    }

    /// The server's `tls` block; `verify` makes it demand a client certificate from this CA.
    fn nats_tls_block(&self, verify: bool) -> String {
        let mut block = format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n",
            path_quoted(&self.server_cert_file),
            path_quoted(&self.server_key_file)
        );
        if verify {
            block.push_str(&format!(
                "  ca_file: {}\n  verify: true\n",
                path_quoted(&self.ca_file)
            ));
        }
        block.push_str("}\n");
        block
    }

    /// Client options that trust this CA.
    fn nats_options(&self) -> NatsOptions {
        NatsOptions {
            tls_required: true,
            tls_ca_file: Some(self.ca_file.clone()),
            ..NatsOptions::default()
        }
    }

    /// Client options that trust this CA and present the client certificate.
    fn nats_options_with_client_certificate(&self) -> NatsOptions {
        NatsOptions {
            tls_cert_file: Some(self.client_cert_file.clone()),
            tls_key_file: Some(self.client_key_file.clone()),
            ..self.nats_options()
        }
    }
}

/// Issues a certificate for `names` signed by `ca`; returns the certificate and key files.
fn issue(
    ca: &CertifiedIssuer<'_, KeyPair>,
    dir: &Path,
    stem: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("leaf certificate");
    let cert_file = dir.join(format!("{stem}.pem"));
    let key_file = dir.join(format!("{stem}-key.pem"));
    fs::write(&cert_file, cert.pem()).expect("write certificate");
    fs::write(&key_file, key.serialize_pem()).expect("write key");
    (cert_file, key_file)
}

fn kafka_options(pairs: &[(&str, &str)]) -> KafkaOptions {
    KafkaOptions {
        properties: pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    }
}

/// SASL/SCRAM-SHA-512 over plain TCP (tansu 0.6.0 serves no TLS).
fn kafka_scram_options(user: &str, password: &str) -> KafkaOptions {
    kafka_options(&[
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", user),
        ("sasl.password", password),
    ])
}

// ---------------------------------------------------------------------------------------------
// What every test checks
// ---------------------------------------------------------------------------------------------

/// Runs a connection attempt, failing the test if it neither succeeds nor gives up within
/// [`REFUSAL_MAX`].
async fn bounded<T>(connect: impl Future<Output = Result<T, BusError>>) -> Result<T, BusError> {
    let started = Instant::now();
    let result = tokio::time::timeout(REFUSAL_MAX, connect)
        .await
        .unwrap_or_else(|_| panic!("connection neither made nor refused within {REFUSAL_MAX:?}"));
    assert!(
        started.elapsed() < REFUSAL_MAX,
        "took {:?}",
        started.elapsed()
    );
    result
}

async fn connect_nats(server: &NatsServer, options: &NatsOptions) -> Result<NatsBus, BusError> {
    bounded(NatsBus::connect(&[server.address()], options)).await
}

async fn connect_kafka(server: &TansuServer, options: &KafkaOptions) -> Result<KafkaBus, BusError> {
    bounded(KafkaBus::connect(&[server.address()], options)).await
}

/// The connection was refused with `kind`, and neither the error's text nor its `Debug` shows
/// any of `secrets`.
fn assert_refused<T: Debug>(result: Result<T, BusError>, kind: BusErrorKind, secrets: &[&str]) {
    let error = result.expect_err("connection must be refused");
    assert_eq!(error.kind(), kind, "{error}");
    let shown = format!("{error}\n{error:?}");
    for secret in secrets {
        assert!(
            !shown.contains(secret),
            "the error shows the secret {secret:?}: {shown}"
        );
    }
}

/// Publishes one message and consumes it back through a consumer group: the connection is
/// fully usable, not merely open.
async fn assert_round_trip(bus: &dyn Bus) {
    let subject = unique_subject("secured");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(1))
        .await
        .expect("ensure subject");
    let payload = format!("payment-{}", uuid::Uuid::new_v4().simple());
    bus.publish(Outgoing::new(&subject, payload.clone()))
        .await
        .expect("publish");
    let mut consumer = bus
        .consumer(ConsumerConfig::new(&subject, "auditors"))
        .await
        .expect("consumer");
    let deliveries = collect(consumer.as_mut(), 1).await;
    let payloads: Vec<String> = deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.record.payload).into_owned())
        .collect();
    assert_eq!(payloads, vec![payload]);
    for delivery in deliveries {
        delivery.ack().await.expect("ack");
    }
}

async fn collect(consumer: &mut dyn Consumer, n: usize) -> Vec<Delivery> {
    fetch_until(consumer, n, Instant::now() + DEADLINE).await
}

/// Everything logged in this test process, at every level and from every crate (the buses,
/// async-nats, librdkafka through the Kafka bus). Installed on first use; tests look for their
/// own unique secrets in it, so sharing it between tests is harmless.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let logs = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("install the log capture");
    });
    logs
}

fn logs_text() -> String {
    let logs = captured_logs()
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&logs).into_owned()
}

/// Appends formatted log lines to [`captured_logs`].
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        captured_logs()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// NATS: user and password, token
// ---------------------------------------------------------------------------------------------

async fn nats_server_with_password(user: &str, password: &str) -> NatsServer {
    NatsServer::start_with_config(&format!(
        "authorization {{ user: {}, password: {} }}\n",
        quoted(user),
        quoted(password)
    ))
    .await
    .expect("nats-server with a password")
}

async fn nats_server_with_token(token: &str) -> NatsServer {
    NatsServer::start_with_config(&format!("authorization {{ token: {} }}\n", quoted(token)))
        .await
        .expect("nats-server with a token")
}

fn nats_password_options(user: &str, password: &str) -> NatsOptions {
    NatsOptions {
        user: Some(user.to_owned()),
        password: Some(password.to_owned()),
        ..NatsOptions::default()
    }
}

fn nats_token_options(token: &str) -> NatsOptions {
    NatsOptions {
        token: Some(token.to_owned()),
        ..NatsOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_user_and_password_carry_a_message_end_to_end() {
    let password = secret("pw");
    let server = nats_server_with_password("oi01-worker", &password).await;
    let bus = connect_nats(&server, &nats_password_options("oi01-worker", &password))
        .await
        .expect("connect with the right password");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_wrong_password_is_refused_with_connect_without_showing_it() {
    let password = secret("pw");
    let wrong = secret("wrong-pw");
    let server = nats_server_with_password("oi01-worker", &password).await;
    let result = connect_nats(&server, &nats_password_options("oi01-worker", &wrong)).await;
    assert_refused(result, BusErrorKind::Connect, &[&password, &wrong]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_missing_credentials_are_refused_with_connect() {
    let password = secret("pw");
    let server = nats_server_with_password("oi01-worker", &password).await;
    let result = connect_nats(&server, &NatsOptions::default()).await;
    assert_refused(result, BusErrorKind::Connect, &[&password]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_token_carries_a_message_end_to_end() {
    let token = secret("tok");
    let server = nats_server_with_token(&token).await;
    let bus = connect_nats(&server, &nats_token_options(&token))
        .await
        .expect("connect with the right token");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_wrong_token_is_refused_with_connect_without_showing_it() {
    let token = secret("tok");
    let wrong = secret("wrong-tok");
    let server = nats_server_with_token(&token).await;
    let result = connect_nats(&server, &nats_token_options(&wrong)).await;
    assert_refused(result, BusErrorKind::Connect, &[&token, &wrong]);
}

// ---------------------------------------------------------------------------------------------
// NATS: TLS and mutual TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_with_the_ca_carries_a_message_end_to_end() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.nats_tls_block(false))
        .await
        .expect("nats-server with TLS");
    let bus = connect_nats(&server, &pki.nats_options())
        .await
        .expect("connect over TLS");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_without_the_ca_is_refused_with_connect() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.nats_tls_block(false))
        .await
        .expect("nats-server with TLS");
    let options = NatsOptions {
        tls_required: true,
        ..NatsOptions::default()
    };
    assert_refused(
        connect_nats(&server, &options).await,
        BusErrorKind::Connect,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_required_by_the_client_is_refused_by_a_server_without_tls() {
    let pki = Pki::new();
    let server = NatsServer::start().await.expect("nats-server");
    assert_refused(
        connect_nats(&server, &pki.nats_options()).await,
        BusErrorKind::Connect,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_mutual_tls_with_a_client_certificate_carries_a_message_end_to_end() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.nats_tls_block(true))
        .await
        .expect("nats-server with mutual TLS");
    let bus = connect_nats(&server, &pki.nats_options_with_client_certificate())
        .await
        .expect("connect with the client certificate");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_mutual_tls_without_a_client_certificate_is_refused_with_connect() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.nats_tls_block(true))
        .await
        .expect("nats-server with mutual TLS");
    assert_refused(
        connect_nats(&server, &pki.nats_options()).await,
        BusErrorKind::Connect,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreadable_client_certificate_is_a_config_error() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.nats_tls_block(true))
        .await
        .expect("nats-server with mutual TLS");
    let options = NatsOptions {
        tls_cert_file: Some(pki.dir.path().join("missing-client.pem")),
        ..pki.nats_options_with_client_certificate()
    };
    assert_refused(
        connect_nats(&server, &options).await,
        BusErrorKind::Config,
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// NATS: credentials file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_malformed_creds_file_is_refused_naming_the_file_not_its_contents() {
    let server = NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let creds_file = dir.path().join("oi01-worker.creds");
    let seed_like = format!("SU{}", secret("seed").to_uppercase());
    fs::write(
        &creds_file,
        format!(
            "-----BEGIN NATS USER JWT-----\nnot-a-jwt\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed_like}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("write creds file");
    let options = NatsOptions {
        creds_file: Some(creds_file.clone()),
        ..NatsOptions::default()
    };
    let error = connect_nats(&server, &options)
        .await
        .expect_err("a malformed creds file must be refused");
    assert!(
        matches!(error.kind(), BusErrorKind::Config | BusErrorKind::Connect),
        "{error}"
    );
    let shown = error.to_string();
    assert!(shown.contains("oi01-worker.creds"), "{shown}");
    assert!(
        !format!("{shown}\n{error:?}").contains(&seed_like),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kafka: properties pass through to librdkafka
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_harmless_property_carries_a_message_end_to_end() {
    let server = TansuServer::start().await.expect("tansu");
    let options = kafka_options(&[("client.id", "dcpipe-oi01-clearing")]);
    let bus = connect_kafka(&server, &options)
        .await
        .expect("connect with client.id");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_property_reaches_the_producer_and_wins_over_dcpipe_settings() {
    // dcpipe sets message.max.bytes to twice the payload limit; the caller's value wins, so a
    // record over it is refused by the producer itself.
    let server = TansuServer::start().await.expect("tansu");
    let options = kafka_options(&[("message.max.bytes", "1000")]);
    let bus = connect_kafka(&server, &options)
        .await
        .expect("connect with message.max.bytes");
    let subject = unique_subject("small");
    bus.ensure_subject(&SubjectSpec::new(&subject).with_partitions(1))
        .await
        .expect("ensure subject");
    bus.publish(Outgoing::new(&subject, vec![b'a'; 100]))
        .await
        .expect("a small record fits");
    let error = bus
        .publish(Outgoing::new(&subject, vec![b'a'; 4000]))
        .await
        .expect_err("a record over the caller's message.max.bytes");
    assert_eq!(error.kind(), BusErrorKind::MessageTooLarge, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unknown_property_is_refused_with_config() {
    let server = TansuServer::start().await.expect("tansu");
    let options = kafka_options(&[("dcpipe-not-a-librdkafka.property", "1")]);
    let error = connect_kafka(&server, &options)
        .await
        .expect_err("an unknown property must be refused");
    assert_eq!(error.kind(), BusErrorKind::Config, "{error}");
    assert!(
        error
            .to_string()
            .contains("dcpipe-not-a-librdkafka.property"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_secret_property_librdkafka_rejects_is_refused_without_showing_its_value() {
    // A Java client's property carried over by habit: librdkafka does not know it, and its
    // value holds the password.
    let password = secret("pw");
    let server = TansuServer::start().await.expect("tansu");
    let jaas = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required \
         username=\"oi01\" password=\"{password}\";"
    );
    let options = kafka_options(&[("sasl.jaas.config", &jaas)]);
    let result = connect_kafka(&server, &options).await;
    assert_refused(result, BusErrorKind::Config, &[&password]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ssl_against_a_plaintext_listener_is_refused_with_connect() {
    let server = TansuServer::start().await.expect("tansu");
    let options = kafka_options(&[("security.protocol", "SSL")]);
    assert_refused(
        connect_kafka(&server, &options).await,
        BusErrorKind::Connect,
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Kafka: SASL
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_scram_with_the_right_password_carries_a_message_end_to_end() {
    let password = secret("pw");
    let server = TansuServer::start_with_scram_user("oi01-worker", &password)
        .await
        .expect("tansu with SASL");
    let bus = connect_kafka(&server, &kafka_scram_options("oi01-worker", &password))
        .await
        .expect("connect with the right password");
    assert_round_trip(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_scram_with_a_wrong_password_is_refused_with_connect_without_showing_it() {
    let password = secret("pw");
    let wrong = secret("wrong-pw");
    let server = TansuServer::start_with_scram_user("oi01-worker", &password)
        .await
        .expect("tansu with SASL");
    let result = connect_kafka(&server, &kafka_scram_options("oi01-worker", &wrong)).await;
    assert_refused(result, BusErrorKind::Connect, &[&password, &wrong]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_without_sasl_is_refused_by_a_broker_that_requires_it() {
    let password = secret("pw");
    let server = TansuServer::start_with_scram_user("oi01-worker", &password)
        .await
        .expect("tansu with SASL");
    assert_refused(
        connect_kafka(&server, &KafkaOptions::default()).await,
        BusErrorKind::Connect,
        &[&password],
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets in Debug output and logs
// ---------------------------------------------------------------------------------------------

#[test]
fn nats_options_debug_hides_password_and_token() {
    let password = secret("pw");
    let token = secret("tok");
    let options = NatsOptions {
        user: Some("oi01-worker".into()),
        password: Some(password.clone()),
        token: Some(token.clone()),
        ..NatsOptions::default()
    };
    let shown = format!("{options:?} {options:#?}");
    assert!(shown.contains("oi01-worker"), "{shown}");
    assert!(!shown.contains(&password), "{shown}");
    assert!(!shown.contains(&token), "{shown}");
}

#[test]
fn kafka_options_debug_hides_every_secret_property() {
    let secret_keys = [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
    ];
    let values: Vec<String> = secret_keys.iter().map(|_| secret("s")).collect();
    let mut pairs: Vec<(&str, &str)> = secret_keys
        .iter()
        .zip(&values)
        .map(|(key, value)| (*key, value.as_str()))
        .collect();
    pairs.push(("sasl.username", "oi01-worker"));
    let options = kafka_options(&pairs);
    let shown = format!("{options:?} {options:#?}");
    assert!(shown.contains("oi01-worker"), "{shown}");
    for (key, value) in secret_keys.iter().zip(&values) {
        assert!(shown.contains(key), "{shown}");
        assert!(!shown.contains(value.as_str()), "{key} shown: {shown}");
    }
}

#[test]
fn bus_options_debug_hides_the_secrets_of_both_buses() {
    let nats_password = secret("pw");
    let sasl_password = secret("sasl");
    let options = BusOptions {
        nats: nats_password_options("oi01-worker", &nats_password),
        kafka: kafka_scram_options("oi01-worker", &sasl_password),
        ..BusOptions::default()
    };
    let shown = format!("{options:?}");
    assert!(!shown.contains(&nats_password), "{shown}");
    assert!(!shown.contains(&sasl_password), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_logs_never_contain_the_password() {
    captured_logs();
    let password = secret("pw");
    let wrong = secret("wrong-pw");
    let server = nats_server_with_password("oi01-worker", &password).await;
    let bus = connect_nats(&server, &nats_password_options("oi01-worker", &password))
        .await
        .expect("connect with the right password");
    assert_round_trip(&bus).await;
    let refused = connect_nats(&server, &nats_password_options("oi01-worker", &wrong)).await;
    assert_refused(refused, BusErrorKind::Connect, &[&password, &wrong]);
    let text = logs_text();
    assert!(text.contains("connected to NATS"), "nothing captured");
    assert!(!text.contains(&password), "password logged");
    assert!(!text.contains(&wrong), "wrong password logged");
}

/// With librdkafka's `debug` at its most verbose (it then dumps its configuration) the SASL
/// password still appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_logs_never_contain_the_sasl_password() {
    captured_logs();
    let password = secret("pw");
    let wrong = secret("wrong-pw");
    let verbose = |password: &str| {
        let mut options = kafka_scram_options("oi01-worker", password);
        options.properties.insert("debug".into(), "all".into());
        options
    };
    let server = TansuServer::start_with_scram_user("oi01-worker", &password)
        .await
        .expect("tansu with SASL");
    let bus = connect_kafka(&server, &verbose(&password))
        .await
        .expect("connect with the right password");
    assert_round_trip(&bus).await;
    let refused = connect_kafka(&server, &verbose(&wrong)).await;
    assert_refused(refused, BusErrorKind::Connect, &[&password, &wrong]);
    let text = logs_text();
    assert!(text.contains("connected to Kafka"), "nothing captured");
    assert!(
        text.contains("sasl.password"),
        "librdkafka's configuration dump not captured"
    );
    assert!(!text.contains(&password), "password logged");
    assert!(!text.contains(&wrong), "wrong password logged");
}

/// `postgres://…?sslmode=require&sslrootcert=CA` for `server`.
fn tls_ledger_url(server: &PostgresServer, ca_file: &Path) -> LedgerUrl {
    format!(
        "{}?sslmode=require&sslrootcert={}",
        server.url(),
        ca_file.display()
    )
    .parse()
    .expect("ledger URL")
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How many of the ledger's connections are (or are not) TLS, as the server sees them.
async fn ledger_connections(server: &PostgresServer, tls: bool) -> i64 {
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("plain superuser connection");
    tokio::spawn(connection);
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'dcpipe-ledger' AND s.ssl = $1",
            &[&tls],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ledger_with_required_tls_verifies_the_server() {
    let pki = Pki::new();
    let server = PostgresServer::start_with_tls(&pki.server_cert_file, &pki.server_key_file)
        .await
        .expect("PostgreSQL with TLS");
    let url = tls_ledger_url(&server, &pki.ca_file);
    let ledger = open_ledger(&url, "oi-tls", &LedgerOptions::default())
        .await
        .expect("ledger over TLS");
    let wallet = WalletAccount {
        wallet_id: "w-tls".to_owned(),
        institution_id: "oi-tls".to_owned(),
        tier: 4,
        balance_fen: 12_345,
        limits: WalletLimits {
            balance_limit_fen: 1_000_000,
            single_payment_limit_fen: 100_000,
            daily_limit_fen: 500_000,
            password_free_limit_fen: 100_000,
        },
        locked: false,
    };
    ledger.open_wallets(&[wallet]).await.expect("open a wallet");
    assert_eq!(ledger.total_balance_fen().await.expect("total"), 12_345);
    assert!(
        ledger_connections(&server, true).await >= 1,
        "the ledger's connections are TLS"
    );
    assert_eq!(ledger_connections(&server, false).await, 0);

    // A CA that did not sign the server's certificate: refused, typed, without panicking.
    let stranger = Pki::new();
    assert_ledger_refused(&tls_ledger_url(&server, &stranger.ca_file), "certificate").await;

    // A server without TLS cannot meet sslmode=require.
    let plain = PostgresServer::start().await.expect("PostgreSQL");
    assert_ledger_refused(
        &tls_ledger_url(&plain, &pki.ca_file),
        "does not support TLS",
    )
    .await;
}

/// Opening a ledger at `url` fails as a connection error whose causes mention `why`.
async fn assert_ledger_refused(url: &LedgerUrl, why: &str) {
    let error = open_ledger(url, "oi-tls", &LedgerOptions::default())
        .await
        .expect_err("the ledger must be refused");
    assert_eq!(error.kind(), LedgerErrorKind::Connect, "{error}");
    let chain = error_chain(&error);
    assert!(chain.contains(why), "{chain}");
}
