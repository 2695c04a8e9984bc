//! What each route does. Every failure becomes an [`ApiError`], turned into
//! a JSON body in one place ([`handle_rejection`]); what a client must not
//! see (SQL, driver errors) is logged instead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;

use askama::Template;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::App;
use super::models::{TrendingPage, UpdatesPage};
use super::page::{APP_CSS, APP_JS, FAVICON, IndexPage, TrendingView, UpdateView};
use super::queries::{self, QueryError};

/// A failure with the status and message the client sees.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// `status` with `message`, as a rejection.
    pub fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
        warp::reject::custom(Self {
            status,
            message: message.into(),
        })
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Rejection {
        warp::reject::custom(Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        })
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Rejection {
        warp::reject::custom(Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        })
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        tracing::warn!(%error, "database error answering a request");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the database is unavailable; try again shortly".into(),
        }
    }
}

fn unavailable(error: QueryError) -> Rejection {
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

/// `GET /api/live/updates?limit=&malId=&before=`.
pub async fn updates(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let limit = param(&query, "limit", 1..=500_i64)?.unwrap_or(50);
    let mal_id = param(&query, "malId", 1..=i32::MAX)?;
    let before = param(&query, "before", 1..=i64::MAX)?;
    let rows = queries::latest(&app.pool, limit, mal_id, before)
        .await
        .map_err(unavailable)?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(warp::reply::json(&UpdatesPage {
        updates: rows.iter().map(|r| r.update()).collect(),
        next_before,
    }))
}

/// `GET /api/live/trending?limit=`.
pub async fn trending(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let limit = param(&query, "limit", 1..=super::trending::SIZE)?.unwrap_or(super::trending::SIZE);
    let items = app.hub.trending().into_iter().take(limit).collect();
    Ok(warp::reply::json(&TrendingPage { items }))
}

/// `GET /api/live/anime/{malId}`.
pub async fn anime(mal_id: String, app: App) -> Result<impl Reply, Rejection> {
    let id =
        mal_id.parse::<i32>().ok().filter(|id| *id >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("malId must be a whole number ≥ 1, not {mal_id:?}"))
        })?;
    match queries::anime(&app.pool, id).await.map_err(unavailable)? {
        Some(detail) => Ok(warp::reply::json(&detail)),
        None => Err(ApiError::not_found(format!(
            "no anime with malId {id} has been seen"
        ))),
    }
}

/// `GET /api/live/stats`.
pub async fn stats(app: App) -> Result<impl Reply, Infallible> {
    Ok(warp::reply::json(&app.hub.stats()))
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Result<impl Reply, Infallible> {
    Ok(warp::reply::json(&serde_json::json!({"status": "ok"})))
}

/// `GET /readyz`: the database answers.
pub async fn readyz(app: App) -> Result<impl Reply, Infallible> {
    Ok(match queries::ping(&app.pool).await {
        Ok(()) => warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"status": "ready"})),
            StatusCode::OK,
        ),
        Err(error) => {
            tracing::warn!(%error, "not ready: database unreachable");
            warp::reply::with_status(
                warp::reply::json(
                    &serde_json::json!({"status": "unavailable", "error": "database unreachable"}),
                ),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Result<impl Reply, Infallible> {
    let body = super::metrics::handle().map(|h| h.render()).unwrap_or_default();
    Ok(warp::reply::with_header(
        body,
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// `GET /`: the page, with the current trending list and latest updates.
pub async fn index(query: HashMap<String, String>, app: App) -> Result<impl Reply, Rejection> {
    let token_query = query
        .get("token")
        .map(|t| format!("?token={}", urlencode(t)))
        .unwrap_or_default();
    let page = IndexPage {
        trending: app.hub.trending().iter().map(TrendingView::from).collect(),
        updates: app.hub.recent().iter().map(UpdateView::from).collect(),
        last_id: app.hub.last_id(),
        token_query,
    };
    let html = page.render().map_err(|error| {
        tracing::error!(%error, "cannot render the page");
        warp::reject::custom(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "cannot render the page".into(),
        })
    })?;
    Ok(warp::reply::html(html))
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /static/{file}`.
pub async fn asset(file: String) -> Result<impl Reply, Rejection> {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return Err(ApiError::not_found(format!("no static file {file:?}"))),
    };
    let reply = warp::reply::with_header(body, "content-type", kind);
    Ok(warp::reply::with_header(
        reply,
        "cache-control",
        "public, max-age=300",
    ))
}

/// Every failure as `{"error": "..."}` with the right status.
pub async fn handle_rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if let Some(api) = err.find::<ApiError>() {
        (api.status, api.message.clone())
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        (StatusCode::BAD_REQUEST, format!("bad query string: {e}"))
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        let reply = warp::reply::with_status(
            warp::reply::json(&serde_json::json!({
                "error": "method not allowed: this server answers GET and HEAD"
            })),
            StatusCode::METHOD_NOT_ALLOWED,
        );
        return Ok(warp::reply::with_header(reply, "allow", "GET, HEAD").into_response());
    } else if let Some(e) = err.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = err.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::error!(?err, "unhandled rejection");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response())
}
