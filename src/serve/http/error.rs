//! Every failure a client sees, in one place: an [`ApiError`] (or one of
//! warp's own rejections) becomes a status and a JSON body `{"error": …}`;
//! what a client must not see (SQL, driver errors) is logged instead.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::store::StoreError;

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

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "database error answering a request");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the database is unavailable; try again shortly".into(),
        }
    }
}

/// Every failure as `{"error": "..."}` with the right status.
pub async fn handle_rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if let Some(api) = err.find::<ApiError>() {
        if api.status == StatusCode::UPGRADE_REQUIRED {
            let reply = warp::reply::with_status(
                warp::reply::json(&serde_json::json!({ "error": api.message })),
                api.status,
            );
            return Ok(warp::reply::with_header(reply, "sec-websocket-version", "13").into_response());
        }
        if api.status == StatusCode::METHOD_NOT_ALLOWED {
            let reply = warp::reply::with_status(
                warp::reply::json(&serde_json::json!({ "error": api.message })),
                api.status,
            );
            return Ok(warp::reply::with_header(reply, "allow", "GET, HEAD").into_response());
        }
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
