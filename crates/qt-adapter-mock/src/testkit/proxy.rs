//! A TCP forwarder that a test can cut and restore, to take a broker away from an adapter
//! without touching the broker.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Forwards connections from a loopback port to `upstream`. Point the adapter at
/// [`CuttableProxy::addr`]; [`CuttableProxy::cut`] then closes every connection and refuses
/// new ones until [`CuttableProxy::restore`], which listens on the same port again.
#[derive(Debug)]
pub struct CuttableProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// The accept loop, which owns the forwarded connections; `None` while cut.
    serving: Mutex<Option<JoinSet<()>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            upstream,
            serving: Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    /// Where the adapter under test connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream;
        let mut serving = JoinSet::new();
        serving.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.serving.lock() = Some(serving);
    }

    /// Closes the listener and every forwarded connection.
    pub async fn cut(&self) {
        let serving = self.serving.lock().take();
        if let Some(mut serving) = serving {
            serving.shutdown().await;
        }
    }

    /// Listens on the same port again (waiting up to 5 s for the port to be free).
    pub async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the proxy cannot listen on {} again: {e}", self.addr),
            }
        }
    }
}
