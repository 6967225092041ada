//! DeviceHive JWTs (CONTRACT.md §4): HS256, every claim under `payload`, `e` in epoch milliseconds,
//! `t` 1 = access / 0 = refresh, network and device-type ids as strings. No standard `exp` claim, so
//! expiry is checked here rather than by the JWT library.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const TYPE_REFRESH: i64 = 0;
pub const TYPE_ACCESS: i64 = 1;

/// The `payload` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenPayload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub u: Option<i64>,
    #[serde(default)]
    pub a: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dt: Option<Vec<serde_json::Value>>,
    pub e: Option<i64>,
    pub t: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpc: Option<String>,
}

impl TokenPayload {
    /// Action ids of the `a` claim; `None` when an entry is not an integer.
    pub fn action_ids(&self) -> Option<Vec<i64>> {
        match &self.a {
            None => Some(vec![]),
            Some(list) => list.iter().map(|v| v.as_i64()).collect(),
        }
    }
}

/// Turns an id list claim into strings (`"*"` stays `"*"`).
pub fn id_claim(values: &[serde_json::Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    payload: TokenPayload,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
    WrongType,
    /// The token may be fine, but the database that says whether its user is still active cannot
    /// answer now (503, not 401: the client should retry, not log in again).
    Unavailable,
}

/// Signing and verification keys derived from the secret string.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    verified: Arc<Verified>,
}

/// Tokens whose signature these keys verified, with their payload: a client sends the same token with
/// every request, and checking the signature and parsing the claims again was 7.6 % of a REST
/// insert's CPU. A token's text fixes its payload, so a remembered payload is what decoding would
/// give; its type and expiry are still checked on every use. Bounded: when full it starts over.
#[derive(Default)]
struct Verified {
    tokens: Mutex<HashMap<String, TokenPayload>>,
}

/// Tokens remembered at most (a few hundred bytes each).
const VERIFIED_CAPACITY: usize = 1024;

impl Verified {
    fn get(&self, token: &str) -> Option<TokenPayload> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    fn remember(&self, token: &str, payload: &TokenPayload) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= VERIFIED_CAPACITY {
            tokens.clear();
        }
        tokens.insert(token.to_string(), payload.clone());
    }
}

impl JwtKeys {
    pub fn from_secret(secret: &str) -> JwtKeys {
        let key = derive_key(secret);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        JwtKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            verified: Arc::default(),
        }
    }

    pub fn sign(&self, payload: &TokenPayload) -> String {
        let claims = Claims { payload: payload.clone() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a serialisable payload cannot fail")
    }

    /// Verifies signature, presence of `e` and `t`, the expected type and expiry.
    pub fn verify(&self, token: &str, expected_type: i64, now_ms: i64) -> Result<TokenPayload, TokenError> {
        let token = token.trim();
        let p = match self.verified.get(token) {
            Some(p) => p,
            None => {
                let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
                    .map_err(|_| TokenError::Invalid)?;
                let p = data.claims.payload;
                // Only a token that can be valid now or later is worth remembering.
                if p.t.is_some() && p.e.is_some_and(|e| e >= now_ms) {
                    self.verified.remember(token, &p);
                }
                p
            }
        };
        let (Some(e), Some(t)) = (p.e, p.t) else {
            return Err(TokenError::Invalid);
        };
        if t != expected_type {
            return Err(TokenError::WrongType);
        }
        if e < now_ms {
            return Err(TokenError::Expired);
        }
        Ok(p)
    }
}

/// DeviceHive decodes the secret as Base64 leniently — characters outside the alphabet are skipped and a
/// trailing incomplete group is dropped — and uses the bytes as the HMAC key (§4.2).
pub fn derive_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    let mut clean: Vec<u8> = secret.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/').collect();
    clean.truncate(clean.len() / 4 * 4);
    base64::engine::general_purpose::STANDARD.decode(&clean).unwrap_or_default()
}

/// A random secret like the reference's (130 random bits in base-32).
pub fn generate_secret() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::thread_rng();
    (0..52).map(|_| ALPHABET[rng.gen_range(0..32)] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derivation_matches_devicehive() {
        assert_eq!(derive_key("devicehive"), vec![0x75, 0xeb, 0xe2, 0x71, 0xe8, 0x62]);
    }

    #[test]
    fn sign_verify_and_refusals() {
        let keys = JwtKeys::from_secret("devicehive");
        let p = TokenPayload {
            u: Some(1),
            a: Some(vec![0.into()]),
            n: Some(vec!["*".into()]),
            dt: Some(vec!["*".into()]),
            e: Some(2_000_000_000_000),
            t: Some(TYPE_ACCESS),
            tpc: None,
        };
        let token = keys.sign(&p);
        assert_eq!(keys.verify(&token, TYPE_ACCESS, 0).unwrap(), p);
        assert_eq!(keys.verify(&token, TYPE_REFRESH, 0), Err(TokenError::WrongType));
        assert_eq!(keys.verify(&token, TYPE_ACCESS, 3_000_000_000_000), Err(TokenError::Expired));
        let other = JwtKeys::from_secret("another-secret");
        assert_eq!(other.verify(&token, TYPE_ACCESS, 0), Err(TokenError::Invalid));
    }

    #[test]
    fn a_remembered_token_is_checked_like_a_new_one() {
        let keys = JwtKeys::from_secret("devicehive");
        let p =
            TokenPayload { u: Some(7), a: None, n: None, dt: None, e: Some(1_000), t: Some(TYPE_ACCESS), tpc: None };
        let token = keys.sign(&p);
        assert_eq!(keys.verify(&token, TYPE_ACCESS, 0).unwrap(), p);
        assert_eq!(keys.verify(&format!(" {token}\n"), TYPE_ACCESS, 0).unwrap(), p, "the same token, trimmed");
        // From memory now: its type and expiry still decide.
        assert_eq!(keys.verify(&token, TYPE_REFRESH, 0), Err(TokenError::WrongType));
        assert_eq!(keys.verify(&token, TYPE_ACCESS, 1_001), Err(TokenError::Expired));
        // A token that differs from a remembered one in its signature is decoded, and refused.
        let at = token.len() - 5;
        let flipped = if &token[at..at + 1] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
        assert_eq!(keys.verify(&forged, TYPE_ACCESS, 0), Err(TokenError::Invalid));
        // So is one whose payload was changed (another user) under the remembered signature.
        let other = keys.sign(&TokenPayload { u: Some(8), ..p.clone() });
        let parts: Vec<&str> = token.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let swapped = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
        assert_eq!(keys.verify(&swapped, TYPE_ACCESS, 0), Err(TokenError::Invalid));
    }
}
