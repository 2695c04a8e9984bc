//! Ports for the servers the tests and the benchmarks start on this
//! machine; shared by both (`#[path]`).

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
