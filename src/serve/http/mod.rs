//! The HTTP half of `serve`: what a request meets, from the socket to the
//! JSON.
//!
//! * [`server`] — hyper's connections under warp's filters, for every
//!   listener of the process; graceful drain.
//! * [`head`] — request heads checked against limits before any route.
//! * [`routes`] (what requests look like), [`handlers`] (what they do),
//!   [`guard`] (token, origin, CORS), [`page`] (the HTML), [`error`] (every
//!   failure as JSON).

pub mod error;
pub mod guard;
pub mod handlers;
pub mod head;
pub mod page;
pub mod routes;
pub mod server;

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_util::task::TaskTracker;

use super::access::Access;
use super::live::hub::Hub;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub access: Arc<Access>,
    /// The WebSocket connections, so shutdown can wait for them.
    pub sockets: TaskTracker,
    /// Most updates one resume replays.
    pub resume_max_updates: i64,
}
