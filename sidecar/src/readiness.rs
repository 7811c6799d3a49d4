//! Whether a starting child is ready: its port knocked on often, and probed for
//! real (a TCP connect, or an HTTP GET) once it answers; the listener must be the
//! child's own. The probe itself serves container apps too.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::Readiness;
use crate::ports;

const PROBE_EVERY: Duration = Duration::from_millis(50);
/// While a child starts, how often its port is knocked on: what a cold start waits
/// at most past readiness.
pub const LISTEN_CHECK_EVERY: Duration = Duration::from_millis(1);

/// The readiness checks of one start.
pub struct ReadinessCheck<'a> {
    readiness: &'a Readiness,
    port: u16,
    /// The child's process group, which must hold the listening socket.
    pgid: u32,
    next_probe: Instant,
}

impl<'a> ReadinessCheck<'a> {
    pub fn new(readiness: &'a Readiness, port: u16, pgid: u32) -> ReadinessCheck<'a> {
        ReadinessCheck { readiness, port, pgid, next_probe: Instant::now() }
    }

    /// One check, to be repeated every [`LISTEN_CHECK_EVERY`]: true once the child
    /// is ready.
    pub async fn ready(&mut self) -> bool {
        // Knock often (a loopback connect that is refused costs tens of µs, where
        // reading /proc/net/tcp can cost a millisecond), and probe for real as soon
        // as the port answers, else every 50 ms. Whose socket it is, /proc says once.
        let now = Instant::now();
        if now >= self.next_probe || accepts_connections(self.port).await {
            if probe(self.readiness, loopback(self.port)).await && ports::listened_by_group(self.port, self.pgid) {
                return true;
            }
            self.next_probe = Instant::now() + PROBE_EVERY;
        }
        false
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Whether something accepts connections on the port (refused at once when not).
async fn accepts_connections(port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(Duration::from_millis(50), connect).await, Ok(Ok(_)))
}

/// One readiness check at `address`: a TCP connect, or an HTTP GET answering 2xx/3xx.
pub async fn probe(readiness: &Readiness, address: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(address);
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(500), connect).await else {
        return false;
    };
    let Readiness::Http(path) = readiness else { return true };
    let mut stream = stream;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_millis(500), stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => matches!(&head[9..10], b"2" | b"3") && head.starts_with(b"HTTP/1."),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A one-connection-at-a-time server answering every connection with `status_line`.
    async fn answering(status_line: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(format!("{status_line}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn an_http_probe_wants_2xx_or_3xx_and_a_tcp_probe_a_listener() {
        let ready = Readiness::Http("/ready".into());
        assert!(probe(&ready, loopback(answering("HTTP/1.1 204 No Content").await)).await);
        assert!(probe(&ready, loopback(answering("HTTP/1.1 302 Found").await)).await);
        assert!(!probe(&ready, loopback(answering("HTTP/1.1 503 Service Unavailable").await)).await);
        let port = answering("HTTP/1.1 500 Internal Server Error").await;
        assert!(probe(&Readiness::Tcp, loopback(port)).await);
        assert!(accepts_connections(port).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!accepts_connections(closed).await);
        assert!(!probe(&Readiness::Tcp, loopback(closed)).await);
    }
}
