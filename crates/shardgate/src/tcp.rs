//! Writing to TCP sockets on the hot path.

use std::io;

use tokio::net::TcpStream;

/// Writes all of `buf`. The usual case, where one `send` takes everything,
/// is a plain system call: no future state machine, no waker, and none of
/// tokio's readiness bookkeeping, which only matters once the socket buffer
/// is full. Then the rest goes through tokio (`writable`, `try_write`), which
/// clears its readiness on `WouldBlock`, so the wait really waits.
pub async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    while !buf.is_empty() {
        let written = match socket.send(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_and_write(stream, buf).await,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other,
        };
        match written? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Writes all of `buf` to a server connection: plain TCP as [`write_all`],
/// TLS through rustls (then flushed to the socket).
pub async fn write_server(stream: &mut shardgate_pool::ServerStream, buf: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    match stream {
        shardgate_pool::ServerStream::Plain(tcp) => write_all(tcp, buf).await,
        tls => {
            tls.write_all(buf).await?;
            tls.flush().await
        }
    }
}

/// Waits until the socket takes bytes again and writes what it takes.
async fn wait_and_write(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
