//! A connection's byte stream, plain TCP or TLS over it (the proxy's side
//! of a client connection and of a server connection), and the hot path's
//! socket writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A TLS stream over TCP (rustls's server or client side).
pub trait TlsOverTcp: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream;
}

impl TlsOverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TlsOverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Plain TCP, or TLS `S` over it.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<S>),
}

impl<S: TlsOverTcp> MaybeTls<S> {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }

    /// Writes all of `buf` ([`write_all`] on plain TCP) and, over TLS,
    /// flushes the records to the socket (rustls may hold them otherwise).
    pub async fn send_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => write_all(s, buf).await,
            MaybeTls::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    /// Ready when the client has closed its side of the connection (or it
    /// failed), while the proxy waits for servers; pending otherwise. It
    /// reads nothing: bytes the client sent stay for the session (and a
    /// client with bytes pending is not watched further this time).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let tcp = self.tcp();
        loop {
            match tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(tcp).peek(&mut probe)
            });
            match peeked {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => return Poll::Pending,
                // Readiness was stale and is cleared: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<S: TlsOverTcp> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: TlsOverTcp> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
