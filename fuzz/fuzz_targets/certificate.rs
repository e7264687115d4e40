//! The certificate parser on arbitrary DER and PEM: a certificate outside dcpipe's profile is
//! refused with a typed error, never a panic; one that parses answers every accessor and
//! writes the same DER back.
#![no_main]

use dcpipe_pipeline::pki::Certificate;
use libfuzzer_sys::fuzz_target;

fn exercise(certificate: &Certificate) {
    let _ = (
        certificate.fingerprint(),
        certificate.serial(),
        certificate.id(),
        certificate.role_name(),
        certificate.role(),
        certificate.institution(),
        certificate.valid_from_ms(),
        certificate.valid_until_ms(),
        certificate.is_ca(),
        certificate.path_len(),
        certificate.key_usage(),
        certificate.public_key(),
        certificate.algorithm(),
        certificate.signature_algorithm(),
        certificate.subject_key_id(),
        certificate.authority_key_id(),
        certificate.is_self_issued(),
    );
    let again = Certificate::from_pem(&certificate.to_pem()).expect("its own PEM parses");
    assert_eq!(again.der(), certificate.der());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(certificate) = Certificate::from_der(data) {
        assert_eq!(certificate.der(), data);
        exercise(&certificate);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(certificate) = Certificate::from_pem(text)
    {
        exercise(&certificate);
    }
});
