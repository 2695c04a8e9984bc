//! Signed, short-lived tokens for browsers: JWTs with a required `exp`,
//! signed with a shared secret (HS256) or with a private key whose public
//! half the server holds (RS256, ES256; PEM files). The static
//! `LIVE_API_TOKEN` stays for operators and scripts; a page that embeds the
//! widget hands its visitors these instead, so what a visitor can read
//! stops working minutes later.
//!
//! A token only ever grants until its `exp` (plus [`LEEWAY`] for clocks
//! a little apart): a WebSocket opened with one is closed then, with
//! [`EXPIRED_CLOSE_CODE`], unless the client sent a fresh token in band
//! first (`{"type":"token","token":"…"}`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock difference allowed between whoever signed a token and this server.
pub const LEEWAY: Duration = Duration::from_secs(5);
/// The WebSocket close code for a connection whose token ran out.
pub const EXPIRED_CLOSE_CODE: u16 = 4401;
/// The close reason sent with [`EXPIRED_CLOSE_CODE`].
pub const EXPIRED_CLOSE_REASON: &str = "token expired";

/// Why the token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {setting} {path}: {error}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{setting} {path} holds no RSA or P-256 EC key in PEM (-----BEGIN PUBLIC KEY----- or -----BEGIN PRIVATE KEY-----)"
    )]
    NotAKey { setting: &'static str, path: PathBuf },
    #[error("LIVE_JWT_SECRET is empty; set a long random secret or unset it")]
    EmptySecret,
    #[error(
        "no key to sign with: set LIVE_JWT_SECRET (--jwt-secret) or LIVE_JWT_PRIVATE_KEY_FILE (--jwt-private-key-file)"
    )]
    NoSigningKey,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Why a token was refused, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the token has expired")]
    Expired,
    #[error("the token has no exp claim (an expiry is required)")]
    NoExpiry,
    #[error("the token's signature does not match this server's key")]
    BadSignature,
    #[error("the token is signed with {0}, which this server does not accept")]
    Algorithm(String),
    #[error("the token is not a JWT")]
    Malformed,
    #[error("this server does not accept signed tokens (set LIVE_JWT_SECRET or LIVE_JWT_PUBLIC_KEY_FILE)")]
    NotConfigured,
}

/// What a valid token grants: access until this instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// `exp` plus [`LEEWAY`].
    pub until: SystemTime,
}

impl Grant {
    /// Time left, zero once over.
    pub fn remaining(&self) -> Duration {
        self.until.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// The claims read and written. Others are ignored.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Optional here so that a token without one is refused by the
    /// validation, as such, rather than as unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
}

/// The keys tokens are checked against.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .finish()
    }
}

impl Verifier {
    /// From `LIVE_JWT_SECRET` and `LIVE_JWT_PUBLIC_KEY_FILE`; `None` when
    /// neither is set.
    pub fn from_settings(
        secret: Option<&str>,
        public_key_file: Option<&Path>,
    ) -> Result<Option<Self>, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes())));
        }
        if let Some(path) = public_key_file {
            let setting = "LIVE_JWT_PUBLIC_KEY_FILE";
            let pem = read(setting, path)?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(KeyError::NotAKey {
                    setting,
                    path: path.to_owned(),
                });
            };
            keys.push(key);
        }
        Ok((!keys.is_empty()).then_some(Self { keys }))
    }

    /// Checks `token`: its signature, its algorithm, its `exp`.
    pub fn verify(&self, token: &str) -> Result<Grant, Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        let Some((algorithm, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refused::Algorithm(format!("{:?}", header.alg)));
        };
        let mut validation = Validation::new(*algorithm);
        validation.leeway = LEEWAY.as_secs();
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => Refused::Expired,
            ErrorKind::MissingRequiredClaim(_) => Refused::NoExpiry,
            ErrorKind::InvalidSignature => Refused::BadSignature,
            ErrorKind::InvalidAlgorithm => Refused::Algorithm(format!("{:?}", header.alg)),
            _ => Refused::Malformed,
        })?;
        let exp = data.claims.exp.ok_or(Refused::NoExpiry)?;
        let until = UNIX_EPOCH + Duration::from_secs(exp) + LEEWAY;
        Ok(Grant { until })
    }
}

/// A key to sign tokens with (the `token` command, tests).
pub struct Signer {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    /// HS256 with a shared secret.
    pub fn secret(secret: &str) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self {
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.as_bytes()),
        })
    }

    /// RS256 or ES256, as the PEM private key in `path` is RSA or EC.
    pub fn private_key_file(path: &Path) -> Result<Self, KeyError> {
        let setting = "LIVE_JWT_PRIVATE_KEY_FILE";
        let pem = read(setting, path)?;
        if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
            return Ok(Self {
                algorithm: Algorithm::RS256,
                key,
            });
        }
        match EncodingKey::from_ec_pem(&pem) {
            Ok(key) => Ok(Self {
                algorithm: Algorithm::ES256,
                key,
            }),
            Err(_) => Err(KeyError::NotAKey {
                setting,
                path: path.to_owned(),
            }),
        }
    }

    /// From the `token` command's settings: the secret first.
    pub fn from_settings(secret: Option<&str>, private_key_file: Option<&Path>) -> Result<Self, KeyError> {
        match (secret, private_key_file) {
            (Some(secret), _) => Self::secret(secret),
            (None, Some(path)) => Self::private_key_file(path),
            (None, None) => Err(KeyError::NoSigningKey),
        }
    }

    /// A token valid for `ttl` from now, for `subject` if given.
    pub fn mint(&self, ttl: Duration, subject: Option<&str>) -> Result<String, KeyError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            exp: Some((now + ttl).as_secs()),
            iat: Some(now.as_secs()),
            sub: subject.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        setting,
        path: path.to_owned(),
        error,
    })
}

/// Whether `text` looks like a JWT (three dot-separated parts), so a static
/// token and a signed one can share the `token` parameter.
pub fn looks_like_jwt(text: &str) -> bool {
    text.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> Verifier {
        Verifier::from_settings(Some(secret), None).unwrap().unwrap()
    }

    #[test]
    fn a_minted_token_is_accepted_until_it_expires() {
        let token = Signer::secret("s3cret")
            .unwrap()
            .mint(Duration::from_secs(600), None)
            .unwrap();
        let grant = verifier("s3cret").verify(&token).unwrap();
        let left = grant.remaining();
        assert!(
            left > Duration::from_secs(590) && left <= Duration::from_secs(605),
            "{left:?}"
        );
    }

    #[test]
    fn bad_tokens_get_clear_refusals() {
        let signer = Signer::secret("s3cret").unwrap();
        let other = signer.mint(Duration::from_secs(60), None).unwrap();
        assert_eq!(verifier("different").verify(&other), Err(Refused::BadSignature));
        assert_eq!(verifier("s3cret").verify("not a token"), Err(Refused::Malformed));

        let key = EncodingKey::from_secret(b"s3cret");
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                exp: Some(1000),
                iat: None,
                sub: None,
            },
            &key,
        )
        .unwrap();
        assert_eq!(verifier("s3cret").verify(&old), Err(Refused::Expired));
        let forever = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "someone"}),
            &key,
        )
        .unwrap();
        assert_eq!(verifier("s3cret").verify(&forever), Err(Refused::NoExpiry));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &Claims {
                exp: Some(u64::MAX / 2),
                iat: None,
                sub: None,
            },
            &key,
        )
        .unwrap();
        assert!(matches!(
            verifier("s3cret").verify(&hs384),
            Err(Refused::Algorithm(_))
        ));
    }

    #[test]
    fn no_settings_no_verifier_and_an_empty_secret_is_an_error() {
        assert!(Verifier::from_settings(None, None).unwrap().is_none());
        assert!(matches!(
            Verifier::from_settings(Some(""), None),
            Err(KeyError::EmptySecret)
        ));
        assert!(matches!(
            Signer::from_settings(None, None),
            Err(KeyError::NoSigningKey)
        ));
        let missing = Verifier::from_settings(None, Some(Path::new("/nonexistent/key.pem")));
        let message = missing.unwrap_err().to_string();
        assert!(message.contains("LIVE_JWT_PUBLIC_KEY_FILE"), "{message}");
    }

    #[test]
    fn public_keys_verify_rs256_and_es256() {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        for (kind, algorithm) in [("rsa", Algorithm::RS256), ("ec", Algorithm::ES256)] {
            let signer = Signer::private_key_file(&keys.join(format!("{kind}-private.pem"))).unwrap();
            assert_eq!(signer.algorithm, algorithm);
            let token = signer.mint(Duration::from_secs(60), Some("page")).unwrap();
            let verifier = Verifier::from_settings(None, Some(&keys.join(format!("{kind}-public.pem"))))
                .unwrap()
                .unwrap();
            assert!(verifier.verify(&token).is_ok(), "{kind}");
            // A secret-signed token is not accepted by a public-key-only server.
            let hs = Signer::secret("x")
                .unwrap()
                .mint(Duration::from_secs(60), None)
                .unwrap();
            assert!(matches!(verifier.verify(&hs), Err(Refused::Algorithm(_))));
        }
        let not_a_key = Verifier::from_settings(None, Some(&keys.join("README")));
        assert!(matches!(not_a_key, Err(KeyError::NotAKey { .. })));
    }

    #[test]
    fn static_tokens_and_jwts_are_told_apart() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("s3cret-t0ken"));
    }
}
