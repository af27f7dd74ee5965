//! Health follows the endpoint: unhealthy while receives fail, healthy again after.

use std::net::SocketAddr;
use std::time::Duration;

use qt_core::{AdapterError, QueueAdapter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use crate::common::*;

/// A TCP forwarder to the emulator that can be cut and restored on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self {
            addr,
            upstream,
            tasks: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and every open connection.
    async fn cut(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    async fn restore(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        }
    }
}

async fn wait_for(adapter: &impl QueueAdapter, ready: bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if adapter.health().await.is_ready() == ready {
            return true;
        }
        sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_while_the_endpoint_is_down_and_recovers() {
    let admin = admin().await;
    let queue = create_queue(&admin, false).await;
    let upstream: SocketAddr = endpoint()
        .split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .expect("QT_TEST_SQS_ENDPOINT is http://<ip>:<port>");
    let mut proxy = Proxy::start(upstream).await;
    let mut cfg = source(&queue);
    cfg.endpoint_url = Some(format!("http://{}", proxy.addr));

    let adapter = adapter(&cfg, 4).await;
    assert!(adapter.health().await.is_healthy());

    proxy.cut().await;
    assert!(
        wait_for(&adapter, false, Duration::from_secs(15)).await,
        "still healthy with the endpoint down"
    );
    // The engine's receive call hears about it too.
    match timeout(Duration::from_secs(10), adapter.receive(1)).await {
        Ok(Err(AdapterError::Receive { .. })) => {}
        other => panic!("expected a receive error, got {other:?}"),
    }

    proxy.restore().await;
    assert!(
        wait_for(&adapter, true, Duration::from_secs(15)).await,
        "did not recover: {:?}",
        adapter.health().await
    );
    send(&admin, &queue, "after recovery").await;
    let mut got = receive_n(&adapter, 1, Duration::from_secs(10)).await;
    let d = got.pop().expect("receives again after recovery");
    assert_eq!(body(&d), "after recovery");
    d.handle.ack().await.unwrap();
    adapter.close().await.unwrap();
    delete_queue(&admin, &queue).await;
}
