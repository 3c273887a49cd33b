//! A TCP proxy for fault injection: tests put it between a client and a real service, then
//! cut every live connection (as a broker restart or a network fault would) and refuse new
//! ones for a while.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on `127.0.0.1:<random port>` forwarding to an upstream address.
#[derive(Clone, Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (`host:port`) on the current runtime.
    pub async fn start(upstream: &str) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let refusing = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let proxy = TcpProxy {
            addr,
            refusing: Arc::clone(&refusing),
            generation: generation.clone(),
            accepted: Arc::clone(&accepted),
        };
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut cut = generation.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection through the proxy.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While `true`, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Connections forwarded so far (a reconnect shows as one more).
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}
