//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as the server side of a login.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::AuthError;

/// Mechanism name offered to clients.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The channel-binding mechanism offered to clients over TLS (RFC 5929
/// `tls-server-end-point`).
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// `tls-server-end-point` channel-binding data (RFC 5929 §4.1) of a server
/// certificate in DER: its hash with the certificate's signature hash
/// algorithm (SHA-256 for MD5, SHA-1 and SHA-256 signatures; SHA-384 and
/// SHA-512 for theirs), as Postgres computes it.
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    // Signature algorithm OIDs (DER contents) using SHA-384 / SHA-512.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    // The outer signatureAlgorithm sits after the TBSCertificate: search
    // the tail of the certificate for the OID.
    let tail = &cert_der[cert_der.len().saturating_sub(600)..];
    let has = |oids: &[&[u8]]| {
        oids.iter()
            .any(|oid| tail.windows(oid.len()).any(|w| w == *oid))
    };
    if has(&SHA512) {
        sha2::Sha512::digest(cert_der).to_vec()
    } else if has(&SHA384) {
        sha2::Sha384::digest(cert_der).to_vec()
    } else {
        Sha256::digest(cert_der).to_vec()
    }
}

/// A SCRAM-SHA-256 verifier as stored by Postgres
/// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

fn key32(b64: &str) -> Result<[u8; 32], AuthError> {
    let v = B64
        .decode(b64)
        .map_err(|_| AuthError::BadSecret("SCRAM key is not base64"))?;
    v.try_into()
        .map_err(|_| AuthError::BadSecret("SCRAM key is not 32 bytes"))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verifier {
    /// Parses a stored verifier.
    pub fn parse(s: &str) -> Result<Verifier, AuthError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(AuthError::BadSecret(
                "verifier must start with SCRAM-SHA-256$",
            ))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(AuthError::BadSecret("verifier lacks '$' before the keys"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(AuthError::BadSecret("verifier lacks iterations:salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(AuthError::BadSecret("verifier lacks StoredKey:ServerKey"))?;
        let iterations = iter
            .parse()
            .map_err(|_| AuthError::BadSecret("iteration count is not a number"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| AuthError::BadSecret("salt is not base64"))?;
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key32(stored)?,
            server_key: key32(server)?,
        })
    }

    /// Computes a verifier from a plain-text password with a random salt.
    pub fn from_password(password: &str) -> Verifier {
        let s = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Verifier::parse(&s).expect("postgres-protocol produces valid verifiers")
    }

    /// A verifier no proof can match, for user names that do not exist, with a
    /// salt derived from the name so repeated probes look like a real user.
    pub fn mock(user: &str, process_secret: &[u8; 16]) -> Verifier {
        let digest = hmac(process_secret, &[user.as_bytes()]);
        let mut stored_key = [0u8; 32];
        rand::rng().fill_bytes(&mut stored_key);
        Verifier {
            iterations: 4096,
            salt: digest[..16].to_vec(),
            stored_key,
            server_key: stored_key,
        }
    }
}

/// The server side of one SCRAM exchange after the client-first message.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
    /// Channel-binding data the client-final message must carry (PLUS).
    binding: Vec<u8>,
}

/// What the server offered and the client chose.
#[derive(Debug, Clone, Copy)]
pub struct Negotiation<'a> {
    /// The client chose SCRAM-SHA-256-PLUS.
    pub plus: bool,
    /// The connection's `tls-server-end-point` data when the server offered
    /// SCRAM-SHA-256-PLUS (a TLS connection).
    pub offered_binding: Option<&'a [u8]>,
}

impl Exchange {
    /// Handles SASLInitialResponse data; returns the state and the server-first message.
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
        negotiation: Negotiation<'_>,
    ) -> Result<(Exchange, String), AuthError> {
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| AuthError::MalformedScram("client-first-message is not UTF-8"))?;
        let (gs2_header, bare) = split_gs2(msg)?;
        let binding = check_binding(gs2_header, negotiation)?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(AuthError::MalformedScram(
                "client-first-message lacks a nonce",
            ))?;
        if bare.split(',').any(|a| a.starts_with("m=")) {
            return Err(AuthError::MalformedScram(
                "mandatory extensions are not supported",
            ));
        }
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let ex = Exchange {
            verifier,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            gs2_header: gs2_header.to_owned(),
            nonce,
            binding,
        };
        Ok((ex, server_first))
    }

    /// Checks the client-final message; on success returns the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthError> {
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| AuthError::MalformedScram("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(AuthError::MalformedScram(
            "client-final-message lacks a proof",
        ))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(AuthError::MalformedScram("client-final-message lacks c="))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::MalformedScram("client-final-message lacks r="))?;
        let mut expected = self.gs2_header.as_bytes().to_vec();
        expected.extend_from_slice(&self.binding);
        if binding != B64.encode(expected) {
            return Err(AuthError::MalformedScram("channel binding does not match"));
        }
        if nonce != self.nonce {
            return Err(AuthError::MalformedScram("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| AuthError::MalformedScram("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(AuthError::MalformedScram("proof is not 32 bytes"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let computed: [u8; 32] = Sha256::digest(&client_key).into();
        if !constant_time_eq(&computed, &self.verifier.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The channel-binding data the client must send back, from its gs2 flag
/// and the mechanism it chose (Postgres's `read_client_first_message`).
fn check_binding(gs2_header: &str, n: Negotiation<'_>) -> Result<Vec<u8>, AuthError> {
    match (gs2_header.as_bytes()[0], n.plus, n.offered_binding) {
        (b'p', true, Some(data)) => {
            let name = gs2_header[..gs2_header.find(',').unwrap_or(0)]
                .strip_prefix("p=")
                .unwrap_or("");
            if name != "tls-server-end-point" {
                return Err(AuthError::MalformedScram(
                    "unsupported SCRAM channel-binding type",
                ));
            }
            Ok(data.to_vec())
        }
        (b'p', _, _) => Err(AuthError::MalformedScram(
            "the client selected SCRAM-SHA-256 without channel binding, but the message includes channel binding data",
        )),
        (_, true, _) => Err(AuthError::MalformedScram(
            "the client selected SCRAM-SHA-256-PLUS, but the message does not include channel binding data",
        )),
        (b'y', false, Some(_)) => Err(AuthError::MalformedScram(
            "channel binding negotiation error: the client supports channel binding but thinks the server does not",
        )),
        _ => Ok(Vec::new()),
    }
}

/// Splits `gs2-header` (`n,,`, `y,,` or `p=<type>,,`) from
/// `client-first-message-bare`.
fn split_gs2(msg: &str) -> Result<(&str, &str), AuthError> {
    let flag = msg.as_bytes().first().copied();
    match flag {
        Some(b'n') | Some(b'y') | Some(b'p') => {}
        _ => return Err(AuthError::MalformedScram("invalid gs2 header")),
    }
    // gs2-header = flag "," [authzid] ","
    let first = msg
        .find(',')
        .ok_or(AuthError::MalformedScram("invalid gs2 header"))?;
    let second = msg[first + 1..]
        .find(',')
        .map(|i| i + first + 1)
        .ok_or(AuthError::MalformedScram("invalid gs2 header"))?;
    Ok((&msg[..=second], &msg[second + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const PLAIN: Negotiation<'static> = Negotiation {
        plus: false,
        offered_binding: None,
    };

    fn run_with(
        password_stored: &str,
        password_client: &str,
        binding: ChannelBinding,
        n: Negotiation<'_>,
    ) -> Result<(), AuthError> {
        let verifier = Verifier::from_password(password_stored);
        let mut client = ScramSha256::new(password_client.as_bytes(), binding);
        let (ex, server_first) = Exchange::start(verifier, client.message(), n)?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| AuthError::MalformedScram("client rejected server-first"))?;
        let server_final = ex.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| AuthError::MalformedScram("client rejected server signature"))
    }

    fn run(password_stored: &str, password_client: &str) -> Result<(), AuthError> {
        run_with(
            password_stored,
            password_client,
            ChannelBinding::unsupported(),
            PLAIN,
        )
    }

    #[test]
    fn channel_binding_over_tls() {
        let data = tls_server_end_point(b"not really a certificate");
        assert_eq!(data.len(), 32);
        let offered = Negotiation {
            plus: true,
            offered_binding: Some(&data),
        };
        run_with(
            "secret",
            "secret",
            ChannelBinding::tls_server_end_point(data.clone()),
            offered,
        )
        .unwrap();
        // Another certificate's data (a man in the middle) fails.
        let other = tls_server_end_point(b"another certificate");
        assert!(run_with(
            "secret",
            "secret",
            ChannelBinding::tls_server_end_point(other),
            offered
        )
        .is_err());
        // A client that can bind but believes the server cannot (`y`) is a
        // downgrade when the server offered PLUS.
        let chose_plain = Negotiation {
            plus: false,
            offered_binding: Some(&data),
        };
        assert!(run_with(
            "secret",
            "secret",
            ChannelBinding::unrequested(),
            chose_plain
        )
        .is_err());
        run_with(
            "secret",
            "secret",
            ChannelBinding::unsupported(),
            chose_plain,
        )
        .unwrap();
    }

    #[test]
    fn full_exchange_with_libpq_compatible_client() {
        run("secret", "secret").unwrap();
        assert_eq!(run("secret", "wrong"), Err(AuthError::WrongPassword));
    }

    #[test]
    fn verifier_roundtrip_and_garbage() {
        let v = Verifier::from_password("x");
        assert_eq!(v.iterations, 4096);
        assert!(Verifier::parse("SCRAM-SHA-256$4096:abc").is_err());
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Exchange::start(v.clone(), b"garbage", PLAIN).is_err());
        assert!(Exchange::start(v, b"p=tls-server-end-point,,n=,r=abc", PLAIN).is_err());
    }

    #[test]
    fn mock_never_matches() {
        let secret = [7u8; 16];
        let verifier = Verifier::mock("ghost", &secret);
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let (ex, server_first) = Exchange::start(verifier, client.message(), PLAIN).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        assert_eq!(ex.finish(client.message()), Err(AuthError::WrongPassword));
    }
}
