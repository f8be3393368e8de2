//! md5 password authentication (`md5` + md5(md5(password + user) + salt)).

use md5::{Digest, Md5};

use super::AuthError;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The stored form of a password for md5: `md5` + hex(md5(password + user)).
pub fn stored_hash(password: &str, user: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// What a client must answer to the challenge `salt` given the stored hash.
pub fn expected_response(stored: &str, salt: [u8; 4]) -> Result<String, AuthError> {
    let inner =
        stored
            .strip_prefix("md5")
            .filter(|h| h.len() == 32)
            .ok_or(AuthError::BadSecret(
                "md5 hash must be 'md5' followed by 32 hex digits",
            ))?;
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    Ok(format!("md5{}", hex(&h.finalize())))
}

/// Checks a client's md5 answer (without its trailing NUL).
pub fn verify(stored: &str, salt: [u8; 4], response: &[u8]) -> Result<(), AuthError> {
    let expected = expected_response(stored, salt)?;
    if super::scram::constant_time_eq(expected.as_bytes(), response) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libpq() {
        // The value postgres-protocol (libpq's algorithm) computes.
        let client = postgres_protocol::authentication::md5_hash(b"app", b"secret", [1, 2, 3, 4]);
        let stored = stored_hash("secret", "app");
        assert!(verify(&stored, [1, 2, 3, 4], client.as_bytes()).is_ok());
        assert_eq!(
            verify(&stored, [1, 2, 3, 5], client.as_bytes()),
            Err(AuthError::WrongPassword)
        );
    }
}
