//! What requests look like: one filter per route, combined, with one
//! rejection handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{self, ApiError};
use super::server::Upgrade;
use super::{App, access, handlers};

/// Longest request target (path and query) served; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes served; more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// `GET`, and `HEAD` wherever `GET` works (the server sends no body for it).
fn get() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// Requests within the size limits; a JSON 414 or 431 otherwise.
fn within_limits() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and_then(|path: warp::path::FullPath, query: String, headers: warp::http::HeaderMap| async move {
            let uri = path.as_str().len() + query.len();
            if uri > MAX_URI_BYTES {
                return Err(ApiError::reject(
                    warp::http::StatusCode::URI_TOO_LONG,
                    format!("the request target is {uri} bytes, over the {MAX_URI_BYTES}-byte limit"),
                ));
            }
            let header_bytes: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum();
            if header_bytes > MAX_HEADER_BYTES {
                return Err(ApiError::reject(
                    warp::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("the request headers are {header_bytes} bytes, over the {MAX_HEADER_BYTES}-byte limit"),
                ));
            }
            Ok(())
        })
        .untuple_one()
}

/// A WebSocket handshake: its key and the connection's upgrade; a JSON 400
/// for anything else at a WebSocket route.
fn upgrade_request() -> impl Filter<Extract = (String, Upgrade), Error = warp::Rejection> + Clone {
    let header = |name: &'static str| warp::header::optional::<String>(name);
    header("upgrade")
        .and(header("connection"))
        .and(header("sec-websocket-version"))
        .and(header("sec-websocket-key"))
        .and(warp::ext::optional::<Upgrade>())
        .and_then(
            |upgrade: Option<String>,
             connection: Option<String>,
             version: Option<String>,
             key: Option<String>,
             slot: Option<Upgrade>| async move {
                let is_websocket = upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
                    && connection.is_some_and(|c| c.to_ascii_lowercase().contains("upgrade"))
                    && version.as_deref() == Some("13");
                match (is_websocket, key, slot) {
                    (true, Some(key), Some(slot)) => Ok((key, slot)),
                    _ => Err(ApiError::reject(
                        warp::http::StatusCode::BAD_REQUEST,
                        "this is the WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket, version 13)",
                    )),
                }
            },
        )
        .untuple_one()
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
    let auth = access::authorized(Arc::clone(&app.access));
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
    let api: BoxedFilter<(Response,)> = match access::cors(&app.access) {
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
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(get())
        .and(auth)
        .and(access::origin_checked(Arc::clone(&app.access)))
        .and(upgrade_request())
        .and(query())
        .and(with_app(app))
        .and_then(
            move |key: String, upgrade: Upgrade, query: HashMap<String, String>, app: App| {
                handlers::websocket(key, upgrade, query, app, shutdown.clone())
            },
        );

    within_limits()
        .and(
            api.or(healthz)
                .or(readyz)
                .or(metrics)
                .or(ws)
                .or(assets)
                .or(favicon)
                .or(index),
        )
        .recover(error::handle_rejection)
}
