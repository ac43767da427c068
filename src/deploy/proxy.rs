//! The app port of each deployment on this node: the agent listens on it (all interfaces)
//! and forwards every connection to the container that serves now, whose own port is
//! published on loopback only. A redeploy points the port at the new container once it is
//! healthy, so the app's URL never stops answering; the old container goes after.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("port {port} is already in use on this node ({why})")]
    InUse { port: u16, why: String },
}

/// One listening app port.
pub struct Proxy {
    pub port: u16,
    target: watch::Sender<Option<u16>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Sends new connections to the container published at `backend` from now on.
    pub fn point_to(&self, backend: u16) {
        self.target.send_replace(Some(backend));
    }

    /// Where new connections go now.
    pub fn target(&self) -> Option<u16> {
        *self.target.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The node's app ports, by port; a port stays bound while any generation of its
/// deployment holds it.
pub struct Proxies {
    /// Where the containers' ports are published.
    backend: IpAddr,
    ports: Mutex<HashMap<u16, (Uuid, Weak<Proxy>)>>,
}

impl Proxies {
    pub fn new(backend: IpAddr) -> Self {
        Self {
            backend,
            ports: Default::default(),
        }
    }

    /// The address app containers publish their ports on.
    pub fn backend(&self) -> IpAddr {
        self.backend
    }

    /// The listening port of deployment `id`, bound when no generation holds it yet.
    pub async fn get(&self, id: Uuid, port: u16) -> Result<Arc<Proxy>, ProxyError> {
        {
            let ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((owner, weak)) = ports.get(&port) {
                if let Some(p) = weak.upgrade() {
                    if *owner == id {
                        return Ok(p);
                    }
                    return Err(ProxyError::InUse {
                        port,
                        why: format!("deployment {owner} serves on it"),
                    });
                }
            }
        }
        // an app moving off this host, or a container stopping, may hold it for a moment
        let deadline = tokio::time::Instant::now() + PORT_WAIT;
        let listener = loop {
            match listen(port).await {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(ProxyError::InUse {
                        port,
                        why: e.to_string(),
                    })
                }
            }
        };
        let (target, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, self.backend, rx, stop.clone()));
        let proxy = Arc::new(Proxy { port, target, stop });
        self.ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, (id, Arc::downgrade(&proxy)));
        Ok(proxy)
    }
}

/// How long a port held by something else is waited for before the app fails.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// Listens on `port` on every address: IPv6 and IPv4 on one dual-stack socket where the
/// host has IPv6 (whatever `net.ipv6.bindv6only` says), IPv4 alone where it has not.
async fn listen(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = || -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    match dual() {
        Ok(s) => TcpListener::from_std(s.into()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(_) => TcpListener::bind(("0.0.0.0", port)).await,
    }
}

async fn serve(
    listener: TcpListener,
    backend: IpAddr,
    target: watch::Receiver<Option<u16>>,
    stop: CancellationToken,
) {
    loop {
        let (mut inbound, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            },
        };
        let Some(port) = *target.borrow() else {
            continue;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect((backend, port)).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::listen;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn an_app_port_takes_ipv4_and_ipv6_clients() {
        let listener = listen(0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                listener.accept().await.unwrap();
            }
        });
        TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        if v6 {
            TcpStream::connect(("::1", port)).await.unwrap();
        } else {
            TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        }
        accept.await.unwrap();
        // a port that is taken is refused, not silently shared
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = listen(port).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
