//! Who may use the server: an optional API token and signed, short-lived
//! tokens ([`super::tokens`]) for the page, `/api/*` and `/ws`, and an
//! optional list of allowed origins (the WebSocket `Origin` check and CORS
//! for the API). Health, metrics and the static files (which hold no data)
//! stay open. The decisions are here, for both halves of the server (a
//! WebSocket checks its in-band tokens with them); the filters that apply
//! them to requests are [`super::http::guard`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::tokens::{self, Refused, Verifier};

/// Refused origins remembered so each is logged once (a bound on memory).
const REFUSED_REMEMBERED: usize = 1000;

/// Access settings; the default lets everyone in.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// When set, requests must carry it (`Authorization: Bearer …` or `?token=…`).
    pub api_token: Option<String>,
    /// When set, the origins allowed to open the WebSocket and call the API
    /// cross-origin (`*` for any).
    pub allowed_origins: Option<Vec<String>>,
    /// When set, signed tokens are accepted too (and a token is required).
    pub verifier: Option<Verifier>,
    /// Origins already logged as refused.
    refused_logged: Arc<Mutex<HashSet<String>>>,
}

/// What a request's credentials grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// No token needed, or the static one: no end.
    Open,
    /// A signed token: until it expires.
    Until(tokens::Grant),
}

/// Why a request's credentials were not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// None given where one is needed.
    Missing,
    /// A static token that does not match.
    Wrong,
    /// A signed token refused.
    Token(Refused),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("no token given"),
            Self::Wrong => f.write_str("the token is not this server's"),
            Self::Token(refused) => refused.fmt(f),
        }
    }
}

impl Access {
    /// From the comma-separated `ALLOWED_ORIGINS` and `LIVE_API_TOKEN`.
    pub fn new(api_token: Option<String>, allowed_origins: Option<&str>) -> Self {
        let origins = allowed_origins.map(|list| {
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect::<Vec<_>>()
        });
        Self {
            api_token: api_token.filter(|t| !t.is_empty()),
            allowed_origins: origins.filter(|o| !o.is_empty()),
            verifier: None,
            refused_logged: Arc::default(),
        }
    }

    /// The same, also taking tokens `verifier` accepts.
    pub fn with_verifier(self, verifier: Option<Verifier>) -> Self {
        Self { verifier, ..self }
    }

    /// Whether requests need a token at all.
    pub fn needs_token(&self) -> bool {
        self.api_token.is_some() || self.verifier.is_some()
    }

    /// What `given` (the bearer or `?token=`) grants.
    pub fn check(&self, given: Option<&str>) -> Result<Grant, Denied> {
        if !self.needs_token() {
            return Ok(Grant::Open);
        }
        let Some(given) = given.filter(|g| !g.is_empty()) else {
            return Err(Denied::Missing);
        };
        if let Some(expected) = &self.api_token
            && same_secret(given, expected)
        {
            return Ok(Grant::Open);
        }
        match &self.verifier {
            Some(verifier) if tokens::looks_like_jwt(given) => {
                verifier.verify(given).map(Grant::Until).map_err(Denied::Token)
            }
            _ => Err(Denied::Wrong),
        }
    }

    /// Logs `origin` as refused, the first time only.
    pub fn note_refused(&self, origin: &str) {
        let Ok(mut logged) = self.refused_logged.lock() else {
            return;
        };
        if logged.len() < REFUSED_REMEMBERED && logged.insert(origin.to_owned()) {
            tracing::warn!(
                origin,
                "refused a page from {origin}: it is not in ALLOWED_ORIGINS (logged once per origin)"
            );
        }
    }

    /// Whether a browser page from `origin` may open the WebSocket.
    /// Requests without an `Origin` header (not from a browser) pass.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(origin)) => {
                let origin = origin.trim_end_matches('/');
                list.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
            }
        }
    }
}

/// Compares without stopping at the first difference.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match() {
        let access = Access::new(None, Some("https://catlog.example/, http://localhost:3001"));
        assert!(access.origin_allowed(Some("https://catlog.example")));
        assert!(access.origin_allowed(Some("http://localhost:3001")));
        assert!(!access.origin_allowed(Some("https://evil.example")));
        assert!(access.origin_allowed(None), "non-browser clients send no Origin");
        assert!(Access::new(None, Some("*")).origin_allowed(Some("https://any.example")));
        assert!(Access::new(None, None).origin_allowed(Some("https://any.example")));
        assert!(Access::new(Some(String::new()), Some(" , ")).api_token.is_none());
    }

    #[test]
    fn static_and_signed_tokens_grant_and_refuse_in_words() {
        let secret = "jwt-secret";
        let verifier = Verifier::from_settings(Some(secret), None).unwrap();
        let access = Access::new(Some("static".into()), None).with_verifier(verifier);
        assert_eq!(access.check(Some("static")), Ok(Grant::Open));
        assert_eq!(access.check(None), Err(Denied::Missing));
        assert_eq!(access.check(Some("nope")), Err(Denied::Wrong));
        let signer = tokens::Signer::secret(secret).unwrap();
        let jwt = signer.mint(std::time::Duration::from_secs(60), None).unwrap();
        assert!(matches!(access.check(Some(&jwt)), Ok(Grant::Until(_))));
        let other = tokens::Signer::secret("other").unwrap();
        let forged = other.mint(std::time::Duration::from_secs(60), None).unwrap();
        assert_eq!(
            access.check(Some(&forged)),
            Err(Denied::Token(Refused::BadSignature))
        );
        assert_eq!(Access::default().check(None), Ok(Grant::Open));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
