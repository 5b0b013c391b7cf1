//! The learner's accept loop for remote actor hosts (`--listen`): what stands between the
//! open port and the gRPC server, so that peers who never authenticate cannot take the
//! learner's file descriptors or fill its log.
//!
//! - **Caps**: at most `--max-connections` connections open at once, and at most
//!   `--max-connections-per-peer` from one IP address, counting those still in their TLS
//!   handshake. A connection over a cap is closed at once.
//! - **A deadline**: a connection has `--handshake-timeout` seconds from its accept to finish
//!   the TLS handshake and send a request with the run's token; otherwise it is closed (a
//!   peer that opens TCP, or sends the HTTP/2 preface, and then says nothing does not stay).
//!   The gRPC service marks a connection authenticated ([`Connections::authenticated`]); until
//!   then every read of it also watches the deadline ([`Guarded`]).
//! - **Accept errors** (out of file descriptors, say) back off, from 5 ms to 1 s, instead of
//!   spinning.
//! - **Log lines** of each kind of refusal go through a [`LogLimiter`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::log_limit::LogLimiter;

/// The listener's settings (from `ListenSettings`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once, from all peers (`--max-connections`).
    pub total: usize,
    /// Connections open at once from one IP address (`--max-connections-per-peer`).
    pub per_peer: usize,
    /// From the accept to an authenticated request, TLS handshake included
    /// (`--handshake-timeout`).
    pub handshake: Duration,
}

/// Why a new connection was closed at once.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OverCap {
    /// `--max-connections` connections are open.
    #[error("{0} connections are open, the most --max-connections allows")]
    Total(usize),
    /// `--max-connections-per-peer` connections from this IP address are open.
    #[error("{open} connections from {ip} are open, the most --max-connections-per-peer allows")]
    PerPeer {
        /// The peer's address.
        ip: IpAddr,
        /// Its open connections.
        open: usize,
    },
}

/// The open connections: counts per IP address and in all, and whether each has sent an
/// authenticated request.
pub struct Connections {
    limits: Limits,
    state: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    authenticated: HashMap<SocketAddr, Arc<AtomicBool>>,
}

/// One open connection's place under the caps; given back when dropped.
pub struct Ticket {
    connections: Arc<Connections>,
    peer: SocketAddr,
    authenticated: Arc<AtomicBool>,
}

impl Connections {
    /// No connections yet, under `limits`.
    pub fn new(limits: Limits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            state: Mutex::new(Open::default()),
        })
    }

    /// A place for a new connection from `peer`, or the cap it would pass.
    pub fn open(self: &Arc<Self>, peer: SocketAddr) -> Result<Ticket, OverCap> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.total >= self.limits.total {
            return Err(OverCap::Total(s.total));
        }
        let ip = peer.ip().to_canonical();
        let open = s.per_ip.get(&ip).copied().unwrap_or(0);
        if open >= self.limits.per_peer {
            return Err(OverCap::PerPeer { ip, open });
        }
        s.total += 1;
        *s.per_ip.entry(ip).or_default() += 1;
        let authenticated = Arc::new(AtomicBool::new(false));
        s.authenticated.insert(peer, authenticated.clone());
        Ok(Ticket {
            connections: self.clone(),
            peer,
            authenticated,
        })
    }

    /// The connection from `peer` sent a request with the run's token: it may stay past the
    /// handshake deadline.
    pub fn authenticated(&self, peer: SocketAddr) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = s.authenticated.get(&peer) {
            a.store(true, Ordering::SeqCst);
        }
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self
            .connections
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        let ip = self.peer.ip().to_canonical();
        if let Some(n) = s.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&ip);
            }
        }
        if s.authenticated
            .get(&self.peer)
            .is_some_and(|a| Arc::ptr_eq(a, &self.authenticated))
        {
            s.authenticated.remove(&self.peer);
        }
    }
}

/// What the accept loop shares with its connections: the caps, the log and a limiter per
/// kind of line.
pub struct Listener {
    connections: Arc<Connections>,
    log: Box<dyn Fn(&str) + Send + Sync>,
    over_cap: LogLimiter,
    timed_out: LogLimiter,
    tls_refused: LogLimiter,
    accept_failed: LogLimiter,
}

impl Listener {
    /// A listener over `connections` that writes its lines through `log`.
    pub fn new(
        connections: Arc<Connections>,
        log: impl Fn(&str) + Send + Sync + 'static,
    ) -> Arc<Listener> {
        Arc::new(Listener {
            connections,
            log: Box::new(log),
            over_cap: LogLimiter::refusals(),
            timed_out: LogLimiter::refusals(),
            tls_refused: LogLimiter::refusals(),
            accept_failed: LogLimiter::refusals(),
        })
    }

    /// Accepts on `listener` and admits each connection under the caps: `admit` takes the
    /// stream, its peer and its ticket (and spawns whatever handshake it needs). Accept
    /// errors back off from 5 ms to 1 s.
    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        mut admit: impl FnMut(TcpStream, SocketAddr, Ticket),
    ) {
        const BACKOFF_MIN: Duration = Duration::from_millis(5);
        const BACKOFF_MAX: Duration = Duration::from_secs(1);
        let mut backoff = BACKOFF_MIN;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the next accept would fail the same way
                    // at once; wait for connections to close.
                    self.accept_failed.log(&*self.log, || {
                        format!("accepting a connection failed: {e}; retrying in {backoff:?}")
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            match self.connections.open(peer) {
                Ok(ticket) => {
                    let _ = tcp.set_nodelay(true);
                    admit(tcp, peer, ticket);
                }
                Err(why) => {
                    drop(tcp);
                    self.over_cap.log(&*self.log, || {
                        format!("refused a connection from {peer}: {why}")
                    });
                }
            }
        }
    }

    /// The connection of `ticket` wrapped to be closed at `deadline` unless authenticated.
    fn guard<S>(self: &Arc<Self>, inner: S, ticket: Ticket, deadline: Instant) -> Guarded<S> {
        Guarded {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            ticket,
            listener: self.clone(),
        }
    }
}

/// Plain-HTTP/2 connections accepted on `listener` under the caps and the deadline of
/// `this`, for `tonic`'s `serve_with_incoming`. Spawns the accept loop on the current
/// runtime.
pub fn plain(
    listener: TcpListener,
    this: Arc<Listener>,
) -> ReceiverStream<Result<Guarded<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let handshake = this.connections.limits.handshake;
    tokio::spawn(this.clone().accept_loop(listener, move |tcp, _, ticket| {
        let conn = this.guard(tcp, ticket, Instant::now() + handshake);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Ok(conn)).await;
        });
    }));
    ReceiverStream::new(rx)
}

/// TLS connections accepted on `listener` under the caps and the deadline: each handshake
/// runs on its own task (its connection holds a ticket, so they are bounded by the caps) and
/// must end before the deadline; a refused one is logged with its reason.
pub fn tls(
    listener: TcpListener,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    this: Arc<Listener>,
) -> ReceiverStream<Result<Guarded<tokio_rustls::server::TlsStream<TcpStream>>, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = this.connections.limits.handshake;
    tokio::spawn(
        this.clone()
            .accept_loop(listener, move |tcp, peer, ticket| {
                let (acceptor, tx, this) = (acceptor.clone(), tx.clone(), this.clone());
                tokio::spawn(async move {
                    let deadline = Instant::now() + handshake;
                    let why = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(this.guard(stream, ticket, deadline))).await;
                            return;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => {
                            format!("no TLS handshake within {handshake:?} (--handshake-timeout)")
                        }
                    };
                    drop(ticket);
                    this.tls_refused.log(&*this.log, || {
                        format!("refused a TLS connection from {peer}: {why}")
                    });
                });
            }),
    );
    ReceiverStream::new(rx)
}

/// A connection that holds its place under the caps ([`Ticket`]) and fails its reads once
/// the handshake deadline passes before an authenticated request (the server then closes
/// it).
pub struct Guarded<S> {
    inner: S,
    /// Until the connection is authenticated.
    deadline: Option<Pin<Box<Sleep>>>,
    ticket: Ticket,
    listener: Arc<Listener>,
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline {
            if this.ticket.authenticated.load(Ordering::SeqCst) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                let (peer, listener) = (this.ticket.peer, &this.listener);
                let limit = listener.connections.limits.handshake;
                listener.timed_out.log(&*listener.log, || {
                    format!(
                        "closed a connection from {peer}: no authenticated request within {limit:?} (--handshake-timeout)"
                    )
                });
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no authenticated request before the handshake deadline",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's soft limit of open files, up to its hard limit, so that `needed`
/// descriptors fit; the limit it has afterwards. Errors: the limit cannot be read.
pub fn raise_fd_limit(needed: u64) -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= needed {
        return Ok(soft);
    }
    let want = needed.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
        Ok(()) => Ok(want),
        Err(_) => Ok(soft),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_count_per_peer_and_in_all_and_give_places_back() {
        let c = Connections::new(Limits {
            total: 3,
            per_peer: 2,
            handshake: Duration::from_secs(1),
        });
        let a = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
        let b = |port: u16| SocketAddr::from(([10, 0, 0, 2], port));
        let t1 = c.open(a(1)).unwrap();
        let _t2 = c.open(a(2)).unwrap();
        assert_eq!(
            c.open(a(3)).err(),
            Some(OverCap::PerPeer {
                ip: a(3).ip(),
                open: 2
            })
        );
        let t3 = c.open(b(1)).unwrap();
        assert_eq!(c.open(b(2)).err(), Some(OverCap::Total(3)));
        assert!(c
            .open(b(2))
            .err()
            .unwrap()
            .to_string()
            .contains("--max-connections allows"));
        assert_eq!(c.open_now(), 3);
        // A closed connection gives its place back, to its peer and in all.
        c.authenticated(a(1));
        assert!(t1.authenticated.load(Ordering::SeqCst));
        drop(t1);
        assert_eq!(c.open_now(), 2);
        let _t4 = c.open(a(4)).unwrap();
        // An IPv4 peer seen as IPv6-mapped counts as the same address.
        drop(t3);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9".parse().unwrap();
        assert_eq!(
            c.open(mapped).err(),
            Some(OverCap::PerPeer {
                ip: a(9).ip(),
                open: 2
            })
        );
        assert!(c.open(b(3)).is_ok());
    }
}
