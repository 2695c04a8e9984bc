//! A WebSocket once hyper has upgraded the connection: configured for
//! many cheap connections, run in a task the server tracks, and written to
//! in bursts of frames encoded once for everyone ([`super::frame`]), with
//! one vectored write straight to the socket. This is why the server
//! finishes upgrades itself (see [`crate::serve::http::server`]).

use std::future::Future;
use std::io::IoSlice;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::task::TaskTracker;

use super::frame::Frame;

/// A WebSocket connection once upgraded.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Largest WebSocket frame the server reads at all; frames above the
/// protocol limit ([`super::ws::MAX_CLIENT_MESSAGE`]) but below this get an
/// `error` reply.
const MAX_FRAME: usize = 1024 * 1024;

/// Bytes tungstenite reads at a time (its buffer grows for a larger frame).
/// Client messages are small, this buffer is allocated for every socket, and
/// tungstenite clears it on each read attempt.
const SOCKET_READ_BUFFER: usize = 512;

/// How every WebSocket is configured: small buffers, because ten thousand
/// idle browsers should cost little; messages written as they come (the
/// connection flushes once per burst); frames above `max_frame` refused.
fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Finishes an upgrade in a task `sockets` tracks: waits for hyper to hand
/// the connection over, then runs `session` on it as a WebSocket.
pub fn accept<F, Fut>(sockets: &TaskTracker, upgrade: OnUpgrade, session: F)
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    sockets.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config(MAX_FRAME)),
                )
                .await;
                session(socket).await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
}

/// Writes `frames` whole, as few writes as the socket allows.
pub(super) async fn write_frames(
    socket: &mut (impl AsyncWrite + Unpin),
    frames: &[Frame],
) -> std::io::Result<()> {
    if let [one] = frames {
        socket.write_all(one.bytes()).await?;
        return socket.flush().await;
    }
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f.bytes())).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let written = socket.write_vectored(rest).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    socket.flush().await
}
