//! The services a chaos scenario breaks, each in a container of its own that can be paused
//! (a hung server), stopped and started (a restart) and killed.
//!
//! Two image sets, chosen by `QT_CHAOS_IMAGES`:
//! - `host` (the default): the image `qt-host-base` that `cargo xtask chaos` builds, whose
//!   containers run this machine's own server binaries from its `/usr`, mounted read-only
//!   (and the cached Nisshi binary and moto virtualenv, mounted the same way). It serves
//!   where no image registry is reachable.
//! - `official`: the services' official images, pulled by the container engine.
//!
//! Ports are published on 127.0.0.1 only: podman's netavark does not forward a port
//! published on 0.0.0.0, and a binding with no address hides the port from testcontainers.

use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{AccessMode, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, ContainerRequest, GenericImage, ImageExt};

/// How long a service has to be back after a restart; RabbitMQ takes about 6 s here.
const READY_WITHIN: Duration = Duration::from_secs(90);

/// Which images the services run from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Images {
    Host,
    Official,
}

impl Images {
    pub fn from_env() -> Self {
        match std::env::var("QT_CHAOS_IMAGES").as_deref() {
            Ok("official") => Images::Official,
            Ok("host") | Err(_) => Images::Host,
            Ok(other) => panic!("QT_CHAOS_IMAGES={other:?}: give host or official"),
        }
    }
}

/// One running service.
pub struct Service {
    pub name: &'static str,
    container: Container<GenericImage>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

impl Service {
    /// Starts the container and waits until `port` answers. `same_host_port` publishes the
    /// port on the same number on the host, for a server that tells clients its address.
    fn start(name: &'static str, request: ContainerRequest<GenericImage>, port: u16, same_host_port: bool) -> Self {
        let container = request
            .with_startup_timeout(READY_WITHIN)
            .with_host_config_modifier(move |host: &mut HostConfig| {
                publish_on_loopback(host, port, same_host_port);
                // A process that is PID 1 ignores signals it has no handler for; an init
                // passes the stop signal on.
                host.init = Some(true);
            })
            .start()
            .unwrap_or_else(|e| panic!("starting the {name} container failed: {e}. `cargo xtask chaos` sets up the container engine and the images"));
        let host_port = container
            .get_host_port_ipv4(port.tcp())
            .unwrap_or_else(|e| panic!("the {name} container's port {port}: {e}"));
        let service = Service {
            name,
            container,
            port: host_port,
        };
        service.wait_ready();
        service
    }

    /// Freezes every process of the service: connections stay open and nothing answers.
    pub fn pause(&self) {
        futures::executor::block_on(self.container.pause()).unwrap_or_else(|e| panic!("pausing {}: {e}", self.name));
    }

    pub fn unpause(&self) {
        futures::executor::block_on(self.container.unpause())
            .unwrap_or_else(|e| panic!("unpausing {}: {e}", self.name));
    }

    /// A clean stop (the stop signal, SIGKILL after 10 s), then a start; back when it answers.
    pub fn restart(&self) {
        self.container
            .stop_with_timeout(Some(10))
            .unwrap_or_else(|e| panic!("stopping {}: {e}", self.name));
        self.start_again();
    }

    /// SIGKILL, then a start; back when it answers.
    pub fn kill_and_start(&self) {
        self.container
            .stop_with_timeout(Some(0))
            .unwrap_or_else(|e| panic!("killing {}: {e}", self.name));
        self.start_again();
    }

    fn start_again(&self) {
        self.container
            .start()
            .unwrap_or_else(|e| panic!("starting {} again: {e}", self.name));
        self.wait_ready();
    }

    /// Its address on the container network `network`, where other containers reach it.
    /// Read from the container's networks by the network's name, which Docker and podman
    /// both fill in (podman calls the mode of a container on its own network "bridge",
    /// where testcontainers' `get_bridge_ip_address` looks for the network by the mode's name).
    fn address_on(&self, network: &str) -> IpAddr {
        let inspected = super::support::runtime().block_on(async {
            let docker = Docker::connect_with_defaults().unwrap_or_else(|e| panic!("a Docker API client: {e}"));
            docker
                .inspect_container(self.container.id(), None)
                .await
                .unwrap_or_else(|e| panic!("inspecting the {} container: {e}", self.name))
        });
        inspected
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut networks| networks.remove(network))
            .and_then(|endpoint| endpoint.ip_address)
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("the {} container has no address on the network {network}", self.name))
    }

    /// Until the port accepts connections (the servers here open it when they are ready).
    fn wait_ready(&self) {
        let started = Instant::now();
        while TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1)).is_err() {
            assert!(
                started.elapsed() < READY_WITHIN,
                "{} did not accept connections on 127.0.0.1:{} within {READY_WITHIN:?}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn publish_on_loopback(host: &mut HostConfig, port: u16, same_host_port: bool) {
    host.port_bindings = Some(
        [(
            format!("{port}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: same_host_port.then(|| port.to_string()),
            }]),
        )]
        .into_iter()
        .collect(),
    );
}

/// The base image of [`Images::Host`], with the host's `/usr` mounted read-only.
fn host_image(port: u16, ready: WaitFor) -> ContainerRequest<GenericImage> {
    GenericImage::new("qt-host-base", "latest")
        .with_exposed_port(port.tcp())
        .with_wait_for(ready)
        .with_mount(Mount::bind_mount("/usr", "/usr").with_access_mode(AccessMode::ReadOnly))
}

/// Redis, keeping nothing on disk (as in production with a cache-only Redis: a restart
/// forgets every claim).
pub fn redis(images: Images) -> Service {
    let ready = WaitFor::message_on_stdout("Ready to accept connections");
    let args = ["--save", "", "--appendonly", "no", "--protected-mode", "no"];
    let request = match images {
        Images::Host => host_image(6379, ready).with_cmd(
            [
                "/usr/bin/redis-server",
                "--port",
                "6379",
                "--bind",
                "0.0.0.0",
                "--dir",
                "/data",
            ]
            .into_iter()
            .chain(args),
        ),
        Images::Official => GenericImage::new("redis", "7")
            .with_exposed_port(6379.tcp())
            .with_wait_for(ready)
            .with_cmd(["redis-server"].into_iter().chain(args)),
    };
    Service::start("redis", request, 6379, false)
}

/// PostgreSQL 15 with trust authentication (clients come from the container network), user
/// and database `postgres`. Its data survives a restart.
pub fn postgres(images: Images) -> Service {
    let ready = WaitFor::message_on_stderr("database system is ready to accept connections");
    let request = match images {
        Images::Host => host_image(5432, ready)
            .with_user("postgres")
            .with_env_var("PGDATA", "/data/pg")
            .with_env_var("LANG", "C.UTF-8")
            .with_cmd(["/bin/sh", "-c", HOST_POSTGRES]),
        Images::Official => GenericImage::new("postgres", "15")
            .with_exposed_port(5432.tcp())
            .with_wait_for(ready)
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust"),
    };
    Service::start("postgres", request, 5432, false)
}

/// Creates the cluster on first start; the server opens TCP only once it is ready.
const HOST_POSTGRES: &str = r#"set -e
B=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  $B/initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  echo 'host all all all trust' >> "$PGDATA/pg_hba.conf"
fi
exec $B/postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp"#;

/// RabbitMQ with guest/guest allowed from outside the container. Durable queues and
/// persistent messages survive a restart.
pub fn rabbitmq(images: Images) -> Service {
    let ready = WaitFor::message_on_stdout("Server startup complete");
    let request = match images {
        Images::Host => host_image(5672, ready)
            .with_user("rabbitmq")
            .with_env_var("HOME", "/data/rabbitmq")
            .with_env_var("RABBITMQ_NODENAME", "rabbit@localhost")
            .with_env_var("RABBITMQ_MNESIA_BASE", "/data/rabbitmq/mnesia")
            .with_env_var("RABBITMQ_LOG_BASE", "/data/rabbitmq/log")
            .with_env_var("RABBITMQ_CONFIG_FILE", "/data/rabbitmq/rabbitmq.conf")
            .with_env_var("RABBITMQ_ENABLED_PLUGINS_FILE", "/data/rabbitmq/enabled_plugins")
            .with_env_var("RABBITMQ_CONF_ENV_FILE", "/data/rabbitmq/rabbitmq-env.conf")
            .with_env_var("RABBITMQ_LOGS", "-")
            .with_env_var("LANG", "C.UTF-8")
            .with_cmd(["/bin/sh", "-c", HOST_RABBITMQ]),
        Images::Official => GenericImage::new("rabbitmq", "3.13")
            .with_exposed_port(5672.tcp())
            .with_wait_for(ready)
            .with_env_var("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-rabbit loopback_users []"),
    };
    Service::start("rabbitmq", request, 5672, false)
}

/// The server script itself, not Debian's wrapper (which switches user and directory).
const HOST_RABBITMQ: &str = r#"set -e
mkdir -p "$HOME"
printf 'loopback_users = none\nlisteners.tcp.default = 5672\n' > "$RABBITMQ_CONFIG_FILE"
[ -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ] || echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
touch "$RABBITMQ_CONF_ENV_FILE"
exec /usr/lib/rabbitmq/bin/rabbitmq-server"#;

/// A Kafka-protocol broker: Nisshi (the binary `QT_CHAOS_NISSHI` names, which
/// `cargo xtask chaos` builds), or the official Apache Kafka image. It tells clients its
/// address, so its port is the same inside and out: a free one.
///
/// Nisshi keeps its topics, groups and offsets in memory, which outlives a pause but not a
/// restart, unless `storage` names an S3 bucket: then they are objects in that bucket, on a
/// moto that stays up while Nisshi is restarted or killed. Apache Kafka keeps its log in
/// the container's own filesystem, which a stop and a start keep, so it needs no bucket.
pub fn nisshi(images: Images, storage: Option<&S3Bucket>) -> Service {
    let port = super::support::free_port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let request = match images {
        Images::Host => {
            let bin = std::env::var("QT_CHAOS_NISSHI")
                .expect("QT_CHAOS_NISSHI: the nisshi binary (cargo xtask chaos sets it)");
            let dir = std::path::Path::new(&bin)
                .parent()
                .expect("the binary's directory")
                .display()
                .to_string();
            let engine = storage.map_or_else(|| "memory://nisshi/".to_owned(), |b| format!("s3://{}/", b.name));
            let request = host_image(port, WaitFor::Nothing)
                .with_mount(Mount::bind_mount(dir.as_str(), "/opt/nisshi").with_access_mode(AccessMode::ReadOnly))
                .with_cmd([
                    "/opt/nisshi/nisshi".to_owned(),
                    "broker".to_owned(),
                    "--listener-url".to_owned(),
                    format!("tcp://0.0.0.0:{port}"),
                    "--advertised-listener-url".to_owned(),
                    listener,
                    "--storage-engine".to_owned(),
                    engine,
                ]);
            match storage {
                None => request,
                // Nisshi's S3 client (object_store) reads its settings from AWS_* variables,
                // and will not start without the system's CA certificates, even for HTTP.
                Some(bucket) => request
                    .with_mount(
                        Mount::bind_mount("/etc/ssl/certs", "/etc/ssl/certs").with_access_mode(AccessMode::ReadOnly),
                    )
                    .with_network(bucket.network.as_str())
                    .with_env_var("AWS_ENDPOINT", bucket.endpoint.as_str())
                    .with_env_var("AWS_ALLOW_HTTP", "true")
                    .with_env_var("AWS_DEFAULT_REGION", S3_REGION)
                    .with_env_var("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
                    .with_env_var("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY),
            }
        }
        Images::Official => GenericImage::new("apache/kafka", "3.9.0")
            .with_exposed_port(port.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
            .with_env_var("KAFKA_NODE_ID", "1")
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var(
                "KAFKA_LISTENERS",
                format!("PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093"),
            )
            .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            )
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
    };
    Service::start("kafka", request, port, true)
}

/// The SQS emulator, moto, keeping its queues in memory: they survive a pause, not a
/// restart. On [`Images::Host`] it is the virtualenv `QT_CHAOS_MOTO` names (which
/// `cargo xtask chaos` installs), run by the Python it was made from; both are mounted
/// read-only at the paths they have on this machine, since a virtualenv refers to its
/// interpreter by absolute path.
pub fn moto(images: Images) -> Service {
    let (request, port) = moto_request(images);
    Service::start("moto", request, port, false)
}

/// The moto container and the port it serves on inside it.
fn moto_request(images: Images) -> (ContainerRequest<GenericImage>, u16) {
    let ready = WaitFor::message_on_stderr("Running on");
    let (request, port) = match images {
        Images::Host => {
            let venv =
                std::env::var("QT_CHAOS_MOTO").expect("QT_CHAOS_MOTO: moto's virtualenv (cargo xtask chaos sets it)");
            let mut request = host_image(4566, ready)
                .with_mount(Mount::bind_mount(venv.as_str(), venv.as_str()).with_access_mode(AccessMode::ReadOnly));
            // A Python under `/usr` is mounted already.
            if let Some(python) = venv_python_prefix(&venv)
                && !std::path::Path::new(&python).starts_with("/usr")
            {
                request = request.with_mount(
                    Mount::bind_mount(python.as_str(), python.as_str()).with_access_mode(AccessMode::ReadOnly),
                );
            }
            let server = format!("{venv}/bin/moto_server");
            let request = request
                .with_env_var("LANG", "C.UTF-8")
                // Nothing to write: the virtualenv is read-only.
                .with_env_var("PYTHONDONTWRITEBYTECODE", "1")
                .with_cmd([
                    format!("{venv}/bin/python3"),
                    server,
                    "-H".to_owned(),
                    "0.0.0.0".to_owned(),
                    "-p".to_owned(),
                    "4566".to_owned(),
                ]);
            (request, 4566)
        }
        // Its entrypoint is `moto_server -H 0.0.0.0`, on moto's default port.
        Images::Official => (
            ContainerRequest::from(
                GenericImage::new("motoserver/moto", "5.2.1")
                    .with_exposed_port(5000.tcp())
                    .with_wait_for(ready),
            ),
            5000,
        ),
    };
    (request, port)
}

/// The region and credentials of the S3 bucket; moto checks no signatures, Nisshi's client
/// signs every request.
const S3_REGION: &str = "us-east-1";
const S3_ACCESS_KEY_ID: &str = "AKIAQTCHAOSTESTKEY02";
const S3_SECRET_ACCESS_KEY: &str = "qt-chaos-s3-secret";

/// An S3 bucket on moto, for a broker in another container to keep its data in. moto runs
/// on a container network of its own, which that container joins to reach it: a port
/// published on the host's loopback is out of another container's reach.
#[derive(Debug)]
pub struct S3Bucket {
    /// Held, not read: the container lives as long as the bucket is needed.
    _moto: Service,
    pub name: &'static str,
    /// The container network moto is on.
    pub network: String,
    /// moto's URL on that network.
    pub endpoint: String,
}

/// Starts moto on a new container network and creates bucket `name` in it.
pub fn s3_bucket(images: Images, name: &'static str) -> S3Bucket {
    let network = super::support::unique("net");
    let (request, port) = moto_request(images);
    let moto = Service::start("moto", request.with_network(network.as_str()), port, false);
    create_bucket(moto.port, name);
    let ip = moto.address_on(&network);
    S3Bucket {
        _moto: moto,
        name,
        network,
        endpoint: format!("http://{ip}:{port}"),
    }
}

/// An unsigned `PUT /<name>`: moto checks no signatures, and sends a request it cannot place
/// by its signature or body to S3.
fn create_bucket(port: u16, name: &str) {
    let answer = super::support::http::http_request(port, "PUT", &format!("/{name}"), None);
    assert!(
        matches!(answer, Some((200, _))),
        "creating the S3 bucket {name} on moto: {answer:?}"
    );
}

/// The installation prefix of the Python a virtualenv was made from: the parent of the
/// `home` directory its `pyvenv.cfg` names.
fn venv_python_prefix(venv: &str) -> Option<String> {
    let cfg = std::fs::read_to_string(std::path::Path::new(venv).join("pyvenv.cfg")).ok()?;
    let home = cfg
        .lines()
        .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == "home"))?
        .1
        .trim();
    Some(std::path::Path::new(home).parent()?.display().to_string())
}
