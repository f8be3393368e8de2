//! Writing to TCP sockets on the hot path.

use std::io;

use tokio::net::TcpStream;

/// Writes all of `buf`: straight to the socket while it takes the bytes (no
/// future state machine or waker on the usual path, where one `send` takes
/// everything), waiting for room only when the socket buffer is full.
pub async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
