//! Join tokens, as Swarm prints them: `SWMTKN-1-<digest>-<secret>`, the
//! SHA-256 digest of the cluster CA certificate and a random secret, both in
//! base 36 (50 and 25 characters).

use std::fmt;
use std::str::FromStr;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate (DER) the joiner must see.
    pub ca_digest: [u8; 32],
    /// The secret that decides the role: the worker's or the manager's.
    pub secret: [u8; 16],
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("ca_digest", &base36(&self.ca_digest, 50)).finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of the `SWMTKN-1-<digest>-<secret>` shape.
    #[error(
        "invalid join token: expected SWMTKN-1-<50 characters>-<25 characters>, as `shoal swarm join-token` prints"
    )]
    Malformed,
}

const PREFIX: &str = "SWMTKN-1-";

impl JoinToken {
    /// A token for the CA with this digest and this secret.
    pub fn new(ca_digest: [u8; 32], secret: [u8; 16]) -> JoinToken {
        JoinToken { ca_digest, secret }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", base36(&self.ca_digest, 50), base36(&self.secret, 25))
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<JoinToken, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::Malformed)?;
        if digest.len() != 50 || secret.len() != 25 {
            return Err(TokenError::Malformed);
        }
        Ok(JoinToken { ca_digest: unbase36(digest)?, secret: unbase36(secret)? })
    }
}

/// Big-endian base 36 of `bytes`, left-padded with zeros to `width`.
fn base36(bytes: &[u8], width: usize) -> String {
    let mut digits = Vec::new();
    let mut number = bytes.to_vec();
    while number.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in number.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 36) as u8;
            rem = acc % 36;
        }
        digits.push(char::from_digit(rem, 36).expect("below 36"));
    }
    while digits.len() < width {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

fn unbase36<const N: usize>(text: &str) -> Result<[u8; N], TokenError> {
    let mut out = [0u8; N];
    for c in text.chars() {
        let mut carry = c.to_digit(36).ok_or(TokenError::Malformed)?;
        if c.is_ascii_uppercase() {
            return Err(TokenError::Malformed);
        }
        for b in out.iter_mut().rev() {
            let acc = u32::from(*b) * 36 + carry;
            *b = acc as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return Err(TokenError::Malformed);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_swarm_lengths() {
        let token = JoinToken::new([0xab; 32], [0x01; 16]);
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-"));
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!((parts[2].len(), parts[3].len()), (50, 25));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        let max = JoinToken::new([0xff; 32], [0xff; 16]);
        assert_eq!(max.to_string().parse::<JoinToken>().unwrap(), max);
        let zero = JoinToken::new([0; 32], [0; 16]);
        assert_eq!(zero.to_string().parse::<JoinToken>().unwrap(), zero);
    }

    #[test]
    fn base36_matches_known_values() {
        assert_eq!(base36(&[0, 35], 1), "z");
        assert_eq!(base36(&[0, 36], 2), "10");
        assert_eq!(unbase36::<2>("10").unwrap(), [0, 36]);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::new([7; 32], [9; 16]).to_string();
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            &good.replace("SWMTKN-1-", "SWMTKN-2-"),
            &good.replacen('0', "!", 1),
            &good.to_uppercase(),
            &format!("SWMTKN-1-{}-{}", "z".repeat(50), "0".repeat(25)),
        ] {
            assert_eq!(bad.parse::<JoinToken>(), Err(TokenError::Malformed), "{bad:?}");
        }
    }
}
