//! A cap on the connections served at once. Each accepted connection holds a permit until it
//! closes; at the cap, accepting pauses and new connections wait in the kernel's accept backlog,
//! so a connection flood costs bounded file descriptors and memory instead of exhausting them.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection, holding its permit until it is dropped.
#[derive(Debug)]
pub struct Limited {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// `incoming`, at most `max` of its connections open at once.
pub fn limit<I>(incoming: I, max: usize) -> impl Stream<Item = io::Result<Limited>>
where
    I: Stream<Item = io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(max));
    incoming.then(move |accepted| {
        let permits = Arc::clone(&permits);
        async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| io::Error::other("the connection limit was closed"))?;
            accepted.map(|io| Limited {
                io,
                _permit: permit,
            })
        }
    })
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
