//! A TCP proxy a test controls, to put a network fault between a component and a real server:
//! a partition that keeps connections open but silent ([`TcpProxy::blackhole`], the half-open
//! connection no FIN ever announces), a cut of every connection ([`TcpProxy::cut`]), or a
//! refusal of new ones ([`TcpProxy::refuse`]).
//!
//! The proxy runs on a thread of its own with its own runtime, so it keeps working whatever the
//! test's runtime does (current-thread, blocked, paused).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;
const REFUSE: u8 = 2;

/// A TCP proxy in front of one upstream address. Dropping it closes everything.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    generation: watch::Sender<u64>,
    connections: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TcpProxy {
    /// Starts a proxy on a free `127.0.0.1` port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (generation, gen_rx) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let (shutdown, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (m, c) = (mode.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
                addr_tx
                    .send(listener.local_addr().expect("proxy addr"))
                    .expect("send proxy addr");
                loop {
                    tokio::select! {
                        _ = &mut shutdown_rx => break,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            if m.load(Ordering::SeqCst) == REFUSE {
                                let _ = client.set_zero_linger();
                                drop(client);
                                continue;
                            }
                            c.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(serve(client, upstream, m.clone(), gen_rx.clone()));
                        }
                    }
                }
            });
        });
        let addr = addr_rx.recv().expect("proxy started");
        Self {
            addr,
            mode,
            generation,
            connections,
            shutdown: Some(shutdown),
        }
    }

    /// The proxy's address (connect here instead of the upstream).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Forwards traffic normally (the default; also ends a blackhole or a refusal).
    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions while keeping every connection open, and accepts new
    /// connections without forwarding them: a network partition as the client sees it (writes
    /// succeed, nothing ever answers, no FIN or RST).
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Resets new connections at once (the server looks down).
    pub fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
    }

    /// Resets every open connection (RST), as a killed server or a `CLIENT KILL` would; new
    /// connections go on in the current mode.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mode: Arc<AtomicU8>,
    mut generation: watch::Receiver<u64>,
) {
    generation.mark_unchanged();
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = pump(&mut cr, &mut sw, &mode);
    let down = pump(&mut sr, &mut cw, &mode);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
    // Dropping both halves with linger 0 sends RST to both sides.
}

async fn pump<R, W>(from: &mut R, to: &mut W, mode: &AtomicU8)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // While blackholed, neither read nor write: bytes wait in the kernel's buffers (the
        // sender's writes succeed until they fill, as in a partition), and flow again, intact
        // and in order, after `pass()`, as TCP retransmission would deliver them.
        wait_for_pass(mode).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_for_pass(mode).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_for_pass(mode: &AtomicU8) {
    while mode.load(Ordering::SeqCst) == BLACKHOLE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
