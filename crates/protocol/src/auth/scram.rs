//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as the server side of a login.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::AuthError;

/// Mechanism name offered to clients.
pub const MECHANISM: &str = "SCRAM-SHA-256";

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
}

impl Exchange {
    /// Handles SASLInitialResponse data; returns the state and the server-first message.
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<(Exchange, String), AuthError> {
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| AuthError::MalformedScram("client-first-message is not UTF-8"))?;
        let (gs2_header, bare) = split_gs2(msg)?;
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
        if binding != B64.encode(self.gs2_header.as_bytes()) {
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

/// Splits `gs2-header` (`n,,` or `y,,`; channel binding `p=` is not offered)
/// from `client-first-message-bare`.
fn split_gs2(msg: &str) -> Result<(&str, &str), AuthError> {
    let flag = msg.as_bytes().first().copied();
    match flag {
        Some(b'n') | Some(b'y') => {}
        Some(b'p') => {
            return Err(AuthError::MalformedScram(
                "channel binding was requested but SCRAM-SHA-256-PLUS was not offered",
            ))
        }
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

    fn run(password_stored: &str, password_client: &str) -> Result<(), AuthError> {
        let verifier = Verifier::from_password(password_stored);
        let mut client =
            ScramSha256::new(password_client.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = Exchange::start(verifier, client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| AuthError::MalformedScram("client rejected server-first"))?;
        let server_final = ex.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| AuthError::MalformedScram("client rejected server signature"))
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
        assert!(Exchange::start(v.clone(), b"garbage").is_err());
        assert!(Exchange::start(v, b"p=tls-server-end-point,,n=,r=abc").is_err());
    }

    #[test]
    fn mock_never_matches() {
        let secret = [7u8; 16];
        let verifier = Verifier::mock("ghost", &secret);
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let (ex, server_first) = Exchange::start(verifier, client.message()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        assert_eq!(ex.finish(client.message()), Err(AuthError::WrongPassword));
    }
}
