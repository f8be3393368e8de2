//! The client socket (plain TCP or TLS) and framed reads during startup.

use std::io;

use bytes::{Buf, BytesMut};
use shardgate_protocol::{Header, ProtocolError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection, with or without TLS.
pub type ClientStream = shardgate_pool::MaybeTls<TlsStream<TcpStream>>;

/// Why reading a client message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Socket error or the client went away.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads more bytes into `buf`; end of stream is an `UnexpectedEof` error.
pub async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<()> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8192);
    }
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads one tagged message of at most `max` bytes; returns its type and body.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, BytesMut), ReadError> {
    loop {
        if let Some(h) = Header::complete(buf, max)? {
            let mut msg = buf.split_to(h.total);
            msg.advance(5);
            return Ok((h.tag, msg));
        }
        fill(stream, buf).await?;
    }
}
