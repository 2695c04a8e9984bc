//! The live half of `serve`: from new history rows to every connected
//! browser.
//!
//! * [`follow`] reads new history rows (LISTEN/NOTIFY + poll) into the [`hub`].
//! * [`figures`] refreshes the stats (events per minute, lag, stalls, delay).
//! * [`hub`] holds what every connection shares and broadcasts, encoded
//!   once ([`frame`]), and the client budget.
//! * [`ws`] runs one WebSocket connection; [`socket`] finishes its upgrade
//!   and writes its bursts.
//! * [`trending`] ranks anime by momentum.

pub mod figures;
pub mod follow;
pub mod frame;
pub mod hub;
pub mod socket;
pub mod trending;
pub mod ws;
