//! What a request must carry to get past the routes' door: the token
//! ([`Access::check`] decides), an allowed `Origin` for the WebSocket, CORS
//! for the API, and the `/api/live/access` probe that tells an embedding
//! page in words whether it may have data.

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::error::ApiError;
use crate::serve::access::{Access, Denied, Grant};
use crate::serve::tokens::Refused;

fn unauthorized(denied: &Denied) -> Rejection {
    ApiError::reject(
        StatusCode::UNAUTHORIZED,
        format!(
            "this server needs a token ({denied}): send `Authorization: Bearer <token>` or add `?token=<token>`"
        ),
    )
}

/// Passes requests that carry the token (or all, when there is none).
pub fn authorized(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    granted(access).map(|_| ()).untuple_one()
}

/// The token a request carries: the bearer, else `?token=`.
fn given_token() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .map(|header: Option<String>, mut query: HashMap<String, String>| {
            let bearer = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned());
            bearer.or_else(|| query.remove("token"))
        })
}

/// What the request's token grants; 401 naming why when it is not enough.
pub fn granted(access: Arc<Access>) -> impl Filter<Extract = (Grant,), Error = Rejection> + Clone {
    given_token().and_then(move |given: Option<String>| {
        let checked = access.check(given.as_deref());
        async move { checked.map_err(|denied| unauthorized(&denied)) }
    })
}

/// `GET /api/live/access`: whether a page from this `Origin` with this
/// token may have data, and why not; answered to any origin (it holds no
/// data), so an embedded element can say "not allowed" in words.
pub fn probe(
    access: Arc<Access>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin").and(given_token()).map(
        move |origin: Option<String>, given: Option<String>| {
            let origin_allowed = access.origin_allowed(origin.as_deref());
            if !origin_allowed && let Some(origin) = &origin {
                access.note_refused(origin);
            }
            let checked = access.check(given.as_deref());
            let reason = if !origin_allowed {
                Some(format!(
                    "this site ({}) may not show CatLog Live data",
                    origin.as_deref().unwrap_or_default()
                ))
            } else {
                checked.as_ref().err().map(|denied| match denied {
                    Denied::Token(Refused::Expired) => "the token has expired".to_owned(),
                    other => format!("a token is needed: {other}"),
                })
            };
            let body = serde_json::json!({
                "allowed": reason.is_none(),
                "originAllowed": origin_allowed,
                "tokenNeeded": access.needs_token(),
                "tokenExpired": checked == Err(Denied::Token(Refused::Expired)),
                "reason": reason,
                "expiresInMs": match checked {
                    Ok(Grant::Until(grant)) => Some(grant.remaining().as_millis() as u64),
                    _ => None,
                },
            });
            let reply = warp::reply::json(&body);
            let reply = warp::reply::with_header(reply, "access-control-allow-origin", "*");
            let reply = warp::reply::with_header(reply, "cache-control", "no-store");
            warp::reply::Reply::into_response(reply)
        },
    )
}

/// Passes WebSocket upgrades from allowed origins.
pub fn origin_checked(access: Arc<Access>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and_then(move |origin: Option<String>| {
            let allowed = access.origin_allowed(origin.as_deref());
            if !allowed && let Some(origin) = &origin {
                access.note_refused(origin);
            }
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
