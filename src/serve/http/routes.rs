//! What requests look like: one filter per route, combined, with one
//! rejection handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::App;
use super::error::{self, ApiError};
use super::server::Upgrade;
use super::{guard, handlers};
use crate::serve::access::Grant;

/// The request [`super::head`] stands in for a refused one: its JSON error.
fn refused() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>(super::head::REFUSAL_HEADER).and_then(
        |value: Option<String>| async move {
            match value.as_deref().and_then(super::head::refusal_in) {
                Some(refusal) => Err(ApiError::reject(
                    warp::http::StatusCode::from_u16(refusal.status)
                        .unwrap_or(warp::http::StatusCode::BAD_REQUEST),
                    refusal.message,
                )),
                None => Err::<Response, _>(warp::reject::not_found()),
            }
        },
    )
}

/// `GET`, and `HEAD` wherever `GET` works (the server sends no body for it).
fn get() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// A WebSocket handshake, strictly as RFC 6455 has it: `GET`, one
/// `Upgrade: websocket`, a `Connection` with `upgrade`, one
/// `Sec-WebSocket-Version: 13` (another version gets 426 naming 13) and one
/// `Sec-WebSocket-Key` that is 16 bytes in base64. Its key and the
/// connection's upgrade; a JSON 400 for anything else.
fn upgrade_request() -> impl Filter<Extract = (String, Upgrade), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Upgrade>())
        .and_then(
            |method: warp::http::Method, headers: warp::http::HeaderMap, slot: Option<Upgrade>| async move {
                let key =
                    handshake(&method, &headers).map_err(|(status, why)| ApiError::reject(status, why))?;
                let slot = slot.ok_or_else(|| ApiError::bad_request("this connection cannot be upgraded"))?;
                Ok::<_, warp::Rejection>((key, slot))
            },
        )
        .untuple_one()
}

/// The checks of [`upgrade_request`]: the key, or the status and why.
fn handshake(
    method: &warp::http::Method,
    headers: &warp::http::HeaderMap,
) -> Result<String, (warp::http::StatusCode, String)> {
    use base64::Engine;
    use warp::http::StatusCode;

    let bad = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            format!("{why}: this is the WebSocket endpoint, connect with a WebSocket client (RFC 6455)"),
        )
    };
    let one = |name: &str| -> Result<Option<&str>, (StatusCode, String)> {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => value
                .to_str()
                .map(|v| Some(v.trim()))
                .map_err(|_| bad(&format!("{name} is not text"))),
            (Some(_), Some(_)) => Err(bad(&format!("more than one {name}"))),
        }
    };
    if method != warp::http::Method::GET {
        return Err(bad("a WebSocket handshake is a GET"));
    }
    if !one("upgrade")?.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return Err(bad("no Upgrade: websocket"));
    }
    let connection_upgrade = headers.get_all("connection").iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
    });
    if !connection_upgrade {
        return Err(bad("no Connection: Upgrade"));
    }
    match one("sec-websocket-version")? {
        Some("13") => {}
        Some(other) => {
            return Err((
                StatusCode::UPGRADE_REQUIRED,
                format!("WebSocket version {other:?} is not spoken here; use 13"),
            ));
        }
        None => return Err(bad("no Sec-WebSocket-Version")),
    }
    let key = one("sec-websocket-key")?.ok_or_else(|| bad("no Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).ok();
    if decoded.is_none_or(|k| k.len() != 16) {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(key.to_owned())
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = warp::Rejection> + Clone {
    warp::query::<HashMap<String, String>>()
}

/// Every route of the server.
pub fn routes(
    app: App,
    shutdown: CancellationToken,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let auth = guard::authorized(Arc::clone(&app.access));
    let updates = warp::path("updates")
        .and(warp::path::end())
        .and(query())
        .and(with_app(app.clone()))
        .and_then(handlers::updates);
    let trending = warp::path("trending")
        .and(warp::path::end())
        .and(query())
        .and(with_app(app.clone()))
        .and_then(handlers::trending);
    let anime = warp::path("anime")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(with_app(app.clone()))
        .and_then(handlers::anime);
    let stats = warp::path("stats")
        .and(warp::path::end())
        .and(with_app(app.clone()))
        .and_then(handlers::stats);
    let api = warp::path("api")
        .and(warp::path("live"))
        .and(get())
        .and(auth.clone())
        .and(updates.or(trending).or(anime).or(stats))
        .map(Reply::into_response);
    let api: BoxedFilter<(Response,)> = match guard::cors(&app.access) {
        Some(cors) => api.with(cors).map(Reply::into_response).boxed(),
        None => api.boxed(),
    };

    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(get())
        .and_then(handlers::healthz);
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(get())
        .and(with_app(app.clone()))
        .and_then(handlers::readyz);
    let metrics = crate::metrics::route();
    let index = warp::path::end()
        .and(get())
        .and(auth.clone())
        .and(query())
        .and(with_app(app.clone()))
        .and_then(handlers::index);
    let assets = warp::path("static")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(get())
        .and_then(handlers::asset);
    let favicon = warp::path("favicon.ico")
        .and(warp::path::end())
        .and(get())
        .and_then(|| handlers::asset("favicon.svg".to_owned()));
    let probe = warp::path!("api" / "live" / "access")
        .and(get())
        .and(guard::probe(Arc::clone(&app.access)));
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(get())
        .and(guard::origin_checked(Arc::clone(&app.access)))
        .and(guard::granted(Arc::clone(&app.access)))
        .and(upgrade_request())
        .and(query())
        .and(with_app(app))
        .and_then(
            move |grant: Grant, key: String, upgrade: Upgrade, query: HashMap<String, String>, app: App| {
                handlers::websocket(grant, key, upgrade, query, app, shutdown.clone())
            },
        );

    refused()
        .or(probe)
        .unify()
        .or(api)
        .unify()
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(ws)
        .or(assets)
        .or(favicon)
        .or(index)
        .recover(error::handle_rejection)
}

/// The routes of a server that has only the process's `/metrics` (a
/// `consume` process's `METRICS_ADDR`): refused heads and every other path
/// answered as JSON, as on the full server.
pub fn metrics_only() -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    refused()
        .or(crate::metrics::route())
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            if rejection.is_not_found() {
                return Err::<Response, _>(ApiError::not_found("not found: this server only has /metrics"));
            }
            Err(rejection)
        })
        .recover(error::handle_rejection)
}
