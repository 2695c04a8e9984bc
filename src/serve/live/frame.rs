//! A server message as the bytes a WebSocket carries: a text frame encoded
//! once (by tungstenite's own encoder) and then written as it is to every
//! client that gets it. Server frames are not masked, so the bytes are the
//! same for all; a broadcast to ten thousand clients is one encoding and
//! ten thousand reference counts.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::serve::models::ServerMessage;

/// One encoded WebSocket frame.
#[derive(Debug, Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame holding `message` as JSON.
    pub fn json(message: &ServerMessage) -> Self {
        Self::encode(WireFrame::message(
            message.to_json(),
            OpCode::Data(Data::Text),
            true,
        ))
    }

    /// A ping with no payload.
    pub fn ping() -> Self {
        Self::encode(WireFrame::ping(Bytes::new()))
    }

    fn encode(frame: WireFrame) -> Self {
        let mut bytes = Vec::with_capacity(frame.len());
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut bytes);
        Self(bytes.into())
    }

    /// The frame's bytes, header included.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_text_frame_is_header_then_json() {
        let frame = Frame::json(&ServerMessage::Resync { reason: "gap".into() });
        let json = br#"{"type":"resync","reason":"gap"}"#;
        assert_eq!(frame.bytes()[0], 0x81, "FIN and text");
        assert_eq!(
            usize::from(frame.bytes()[1]),
            json.len(),
            "unmasked, short length"
        );
        assert_eq!(&frame.bytes()[2..], json);
    }
}
