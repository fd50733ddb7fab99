//! Serving a router on a listener with the limits `axum::serve` does not offer: a deadline for
//! a request's head (slowloris), an idle timeout, a cap on open connections, and the client's
//! address for the handlers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::error::{ApiError, ErrorCode};
use super::rejections::{CONNECTION, Rejected, Rejections};
use crate::config::ServerConfig;

/// The listener settings of `[server]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
}

impl Limits {
    pub(super) fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(server.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs.max(1)),
            max_connections: server.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open requests finish.
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    rejections: Arc<Rejections>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let local = listener.local_addr()?;
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper answers a head larger than its buffer with an empty 431; a buffer twice our limit
    // lets `guard::limit_head` answer the usual oversize with JSON first.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    loop {
        let stopping = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) };
        let (permit, (stream, peer)) = tokio::select! {
            accepted = accept(&listener, &permits) => accepted,
            _ = stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let served = Arc::new(AtomicBool::new(false));
        let idle = IdleTimeout::new(stream, limits.idle_timeout);
        let idled = idle.fired.clone();
        let connection = http.serve_connection(
            TokioIo::new(idle),
            service(app.clone(), (peer, local), served.clone()),
        );
        let stop = shutdown.clone();
        let rejections = rejections.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = drive(connection, stop).await;
            let timed_out = idled.load(Ordering::Relaxed)
                || result.as_ref().is_err_and(hyper::Error::is_timeout);
            if let Err(e) = &result {
                tracing::debug!(%peer, error = %e, "A connection ended with an error.");
            }
            if timed_out && !served.load(Ordering::Relaxed) {
                timed_out_before_a_request(peer, &rejections);
            }
        });
    }
    // Every connection holds a permit until it is done.
    let _ = permits.acquire_many(limits.max_connections as u32).await;
    Ok(())
}

/// The address a listener is bound to, in each request's extensions: the guard takes pages
/// of this address as the server's own.
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalAddr(pub SocketAddr);

/// The router for one connection: the client's address and the listener's go into each
/// request's extensions.
fn service(
    app: Router,
    (peer, local): (SocketAddr, SocketAddr),
    served: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    let app = TowerToHyperService::new(app);
    hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(LocalAddr(local));
        served.store(true, Ordering::Relaxed);
        // The path only: a query may carry a trigger's key.
        let seen = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let answer = hyper::service::Service::call(&app, request);
        async move {
            let response = answer.await;
            if let (Some((method, path)), Ok(response)) = (seen, &response) {
                let status = response.status().as_u16();
                tracing::debug!(%peer, %method, path, status, "Answered a request.");
            }
            response
        }
    })
}

/// Serves a connection until it ends, or until shutdown, then lets its request finish.
async fn drive<F>(connection: F, mut stop: watch::Receiver<bool>) -> Result<(), hyper::Error>
where
    F: Future<Output = Result<(), hyper::Error>> + GracefulShutdown,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => {
            connection.as_mut().shut_down();
            connection.await
        }
    }
}

/// A connection closed by a timeout before it sent one whole request (slowloris, or a client
/// that connects and stalls) is a rejection; idle kept-alive connections are not.
fn timed_out_before_a_request(peer: SocketAddr, rejections: &Rejections) {
    let error = ApiError::new(
        ErrorCode::RequestTimeout,
        "no whole request arrived in time (server.header_timeout_secs, server.idle_timeout_secs); the connection was closed",
    );
    rejections.count_and_log(&Rejected {
        flow: CONNECTION,
        error: &error,
        detail: &error.message,
        peer: Some(peer),
        bytes: 0,
        store: false,
    });
}

/// `graceful_shutdown` of hyper's connection, for [`drive`].
trait GracefulShutdown {
    fn shut_down(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The next connection, once fewer than the cap are open. Accept errors (out of file
/// descriptors) are logged and retried after a pause rather than ending the server.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> (tokio::sync::OwnedSemaphorePermit, (TcpStream, SocketAddr)) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok(accepted) => return (permit, accepted),
            Err(e) => {
                tracing::warn!(error = %e, "Could not accept a connection; raise the open-file limit (ulimit -n) if this repeats.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Turns a shutdown future into a watch that every listener and connection can wait on.
pub(super) fn shutdown_watch(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = sender.send(true);
        // Keep the sender until every receiver is gone, so none sees a closed channel early.
        sender.closed().await;
    });
    receiver
}

/// A stream that fails with `TimedOut` once nothing was read or written for `idle`.
struct IdleTimeout {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Set once the deadline closed the stream (hyper may report that as a quiet close).
    fired: Arc<AtomicBool>,
}

impl IdleTimeout {
    fn new(inner: TcpStream, idle: Duration) -> IdleTimeout {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            fired: Arc::default(),
        }
    }

    fn progressed(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Called when the stream is pending: an error once the deadline has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.deadline.as_mut().poll(cx).map(|()| {
            self.fired.store(true, Ordering::Relaxed);
            io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
        })
    }
}

impl AsyncRead for IdleTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.check(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for IdleTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => this.check(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
