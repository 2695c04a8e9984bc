//! Who may use the server: an optional API token (for the page, `/api/*` and
//! `/ws`) and an optional list of allowed origins (the WebSocket `Origin`
//! check and CORS for the API). Health and metrics stay open.

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::error::ApiError;

/// Access settings; the default lets everyone in.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// When set, requests must carry it (`Authorization: Bearer …` or `?token=…`).
    pub api_token: Option<String>,
    /// When set, the origins allowed to open the WebSocket and call the API
    /// cross-origin (`*` for any).
    pub allowed_origins: Option<Vec<String>>,
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

fn unauthorized() -> Rejection {
    ApiError::reject(
        StatusCode::UNAUTHORIZED,
        "this server needs its API token: send `Authorization: Bearer <token>` or add `?token=<token>`",
    )
}

/// Passes requests that carry the token (or all, when there is none).
pub fn authorized(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and_then(move |header: Option<String>, query: HashMap<String, String>| {
            let access = Arc::clone(&access);
            async move {
                let Some(expected) = &access.api_token else {
                    return Ok(());
                };
                let bearer = header
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::trim);
                let given = bearer.or(query.get("token").map(String::as_str));
                match given {
                    Some(token) if same_secret(token, expected) => Ok(()),
                    _ => Err(unauthorized()),
                }
            }
        })
        .untuple_one()
}

/// Passes WebSocket upgrades from allowed origins.
pub fn origin_checked(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and_then(move |origin: Option<String>| {
            let allowed = access.origin_allowed(origin.as_deref());
            async move {
                if allowed {
                    Ok(())
                } else {
                    Err(ApiError::reject(
                        StatusCode::FORBIDDEN,
                        format!(
                            "origin {} may not open this WebSocket (ALLOWED_ORIGINS)",
                            origin.unwrap_or_default()
                        ),
                    ))
                }
            }
        })
        .untuple_one()
}

/// CORS for the API when origins are configured.
pub fn cors(access: &Access) -> Option<warp::cors::Builder> {
    let list = access.allowed_origins.as_ref()?;
    let builder = warp::cors()
        .allow_methods(["GET"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600);
    Some(if list.iter().any(|o| o == "*") {
        builder.allow_any_origin()
    } else {
        builder.allow_origins(list.iter().map(String::as_str))
    })
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
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }
}
