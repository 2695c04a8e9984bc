//! What each route does. Every failure becomes an [`ApiError`], turned into
//! a JSON body in one place ([`super::error::handle_rejection`]); what a
//! client must not see (SQL, driver errors) is logged instead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use askama::Template;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use super::App;
use super::error::ApiError;
use super::page::{
    APP_CSS, APP_JS, FAVICON, IndexPage, LIVE_CLIENT_JS, TrendingView, UpdateView, WIDGET_CSS, WIDGET_JS,
};
use super::server::Upgrade;
use crate::serve::access::Grant;
use crate::serve::live::{socket, trending, ws};
use crate::serve::models::{AnimeDetail, TrendingItem, Update};
use crate::store::{StoreError, history};

fn unavailable(error: StoreError) -> Rejection {
    warp::reject::custom(ApiError::from(error))
}

/// A whole-number query parameter within `range`, or `default` when absent.
fn param<T>(
    query: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, Rejection>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(text) = query.get(name) else {
        return Ok(None);
    };
    match text.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(Some(v)),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a whole number from {} to {}, not {text:?}",
            range.start(),
            range.end()
        ))),
    }
}

/// `GET /api/live/updates`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatesPage {
    pub updates: Vec<Update>,
    /// Pass as `before` for the next (older) page; `None` at the end.
    pub next_before: Option<i64>,
}

/// `GET /api/live/trending`.
#[derive(Debug, Serialize)]
pub struct TrendingPage {
    pub items: Vec<TrendingItem>,
}

/// `GET /api/live/updates?limit=&malId=&before=`.
pub async fn updates(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let limit = param(&query, "limit", 1..=500_i64)?.unwrap_or(50);
    let mal_id = param(&query, "malId", 1..=i32::MAX)?;
    let before = param(&query, "before", 1..=i64::MAX)?;
    let rows = history::latest(&app.pool, limit, mal_id, before)
        .await
        .map_err(unavailable)?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(warp::reply::json(&UpdatesPage {
        updates: rows.into_iter().map(Update::from).collect(),
        next_before,
    }))
}

/// `GET /api/live/trending?limit=`.
pub async fn trending(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let limit = param(&query, "limit", 1..=trending::SIZE)?.unwrap_or(trending::SIZE);
    let items = app.hub.trending().into_iter().take(limit).collect();
    Ok(warp::reply::json(&TrendingPage { items }))
}

/// `GET /api/live/anime/{malId}`.
pub async fn anime(mal_id: String, app: App) -> Result<impl Reply, Rejection> {
    let id =
        mal_id.parse::<i32>().ok().filter(|id| *id >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("malId must be a whole number ≥ 1, not {mal_id:?}"))
        })?;
    match history::anime(&app.pool, id).await.map_err(unavailable)? {
        Some((current, history)) => Ok(warp::reply::json(&AnimeDetail::new(current, history))),
        None => Err(ApiError::not_found(format!(
            "no anime with malId {id} has been seen"
        ))),
    }
}

/// `GET /api/live/stats`.
pub async fn stats(app: App) -> Result<impl Reply, Infallible> {
    Ok(warp::reply::json(&app.hub.stats()))
}

/// `GET /ws?lastId=`: takes the client in, within the connection budget (a
/// JSON 503 over it), and hands the socket to [`ws::run`]; a bad
/// `lastId` is a 400 before the upgrade.
pub async fn websocket(
    grant: Grant,
    key: String,
    upgrade: Upgrade,
    query: HashMap<String, String>,
    app: App,
    shutdown: CancellationToken,
) -> Result<warp::reply::Response, Rejection> {
    let resume = param(&query, "lastId", 0..=i64::MAX)?;
    let Some(slot) = app.hub.try_connect() else {
        let reply = warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "error": format!(
                    "this server holds its most WebSocket clients ({}, MAX_CONNECTIONS); try again shortly",
                    app.hub.max_clients()
                )
            })),
            StatusCode::SERVICE_UNAVAILABLE,
        );
        return Ok(warp::reply::with_header(reply, "retry-after", "5").into_response());
    };
    let Some(on_upgrade) = upgrade.take() else {
        return Err(ApiError::bad_request("this connection cannot be upgraded"));
    };
    let App {
        hub,
        pool,
        access,
        sockets,
        resume_max_updates,
        ..
    } = app;
    let start = ws::Start {
        resume,
        resume_max_updates,
        grant,
    };
    socket::accept(&sockets, on_upgrade, move |socket| {
        ws::run(socket, slot, hub, pool, access, start, shutdown)
    });
    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "upgrade", "websocket");
    let reply = warp::reply::with_header(reply, "connection", "Upgrade");
    let accept = derive_accept_key(key.as_bytes());
    Ok(warp::reply::with_header(reply, "sec-websocket-accept", accept).into_response())
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Result<impl Reply, Infallible> {
    Ok(warp::reply::json(&serde_json::json!({"status": "ok"})))
}

/// `/readyz` answers within this, whatever happens behind it.
const READY_WITHIN: Duration = Duration::from_millis(1500);

/// `GET /readyz`: this server can read new history (its feed answers) and
/// the database answers now; 503 with the reason otherwise, within
/// [`READY_WITHIN`].
pub async fn readyz(app: App) -> Result<impl Reply, Infallible> {
    let trouble = match app.hub.feed_trouble() {
        Some((reason, _)) => Some(reason),
        None => match tokio::time::timeout(READY_WITHIN, crate::store::ping(&app.pool)).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("PostgreSQL unreachable: {error}")),
            Err(_) => Some(format!(
                "PostgreSQL did not answer within {} s",
                READY_WITHIN.as_secs_f64()
            )),
        },
    };
    Ok(match trouble {
        None => warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"status": "ready"})),
            StatusCode::OK,
        ),
        Some(reason) => {
            tracing::debug!(%reason, "not ready");
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"status": "unavailable", "error": reason})),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    })
}

/// `GET /`: the page, with the current trending list and latest updates.
pub async fn index(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let token_query = query
        .get("token")
        .map(|t| format!("?token={}", utf8_percent_encode(t, UNRESERVED)))
        .unwrap_or_default();
    // The page resumes after `last_id`: it must be the id its rows cover.
    let (recent, last_id) = app.hub.recent_and_last_id();
    let page = IndexPage::new(
        app.hub.trending().iter().map(TrendingView::from).collect(),
        recent.iter().map(UpdateView::from).collect(),
        last_id,
        token_query,
    );
    let html = page.render().map_err(|error| {
        tracing::error!(%error, "cannot render the page");
        ApiError::reject(StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page")
    })?;
    Ok(warp::reply::html(html))
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `GET /static/{file}`. Open to every origin: the files hold no data, and
/// a page elsewhere fetches the widget's module and styles with CORS.
pub async fn asset(file: String) -> Result<impl Reply, Rejection> {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "live-client.js" => (LIVE_CLIENT_JS, "text/javascript; charset=utf-8"),
        "catlog-live.js" => (WIDGET_JS, "text/javascript; charset=utf-8"),
        "catlog-live.css" => (WIDGET_CSS, "text/css; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return Err(ApiError::not_found(format!("no static file {file:?}"))),
    };
    let reply = warp::reply::with_header(body, "content-type", kind);
    let reply = warp::reply::with_header(reply, "access-control-allow-origin", "*");
    Ok(warp::reply::with_header(
        reply,
        "cache-control",
        "public, max-age=300",
    ))
}
