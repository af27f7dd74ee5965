//! The container engine the chaos suite's testcontainers talk to, set up idempotently.
//!
//! Where `DOCKER_HOST` is set, or a Docker socket answers at `/var/run/docker.sock`, that
//! engine is used with the services' official images. Otherwise (these machines: no Docker
//! daemon, no image registry) Debian's podman serves the Docker API:
//! - `podman` and `runc` are installed with apt; crun fails on this kernel's rlimits and
//!   hybrid cgroups, hence runc, with the cgroupfs manager (there is no systemd);
//! - `podman system service` listens on [`PODMAN_SOCKET`], in a process group of its own so it
//!   outlives this command;
//! - the image `qt-host-base` is imported from a root filesystem of a few files: its
//!   containers mount this machine's `/usr` read-only and run its own server binaries
//!   (Debian keeps `/bin` and `/lib` under `/usr`), so nothing is downloaded or copied.
//!
//! Containers a killed test left behind (testcontainers labels what it creates) are removed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{cache_dir, output, run};

pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const HOST_IMAGE: &str = "localhost/qt-host-base:latest";
/// What podman needs on these machines; see the module docs.
const CONTAINERS_CONF: &str = "[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"

[containers]
default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]
";

/// The engine to use: what testcontainers needs in its environment.
pub struct Engine {
    pub docker_host: String,
    /// `host` (this machine's binaries in `qt-host-base`) or `official` images.
    pub images: &'static str,
}

/// Makes sure an engine answers, and returns it.
pub fn ensure() -> Result<Engine> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return Ok(Engine {
            docker_host: host,
            images: "official",
        });
    }
    if answers(DOCKER_SOCKET) && !is_podman(DOCKER_SOCKET) {
        return Ok(Engine {
            docker_host: format!("unix://{DOCKER_SOCKET}"),
            images: "official",
        });
    }
    install_podman()?;
    configure_podman()?;
    if !answers(PODMAN_SOCKET) {
        start_podman_service()?;
    }
    remove_leftovers()?;
    build_host_image()?;
    Ok(Engine {
        docker_host: format!("unix://{PODMAN_SOCKET}"),
        images: "host",
    })
}

fn install_podman() -> Result<()> {
    if which("podman") && which("runc") {
        return Ok(());
    }
    eprintln!("xtask: installing podman and runc");
    run("apt-get", &["update", "-qq"])?;
    crate::cmd::run_with_env(
        "apt-get",
        &["install", "-y", "-qq", "podman", "runc"],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

fn configure_podman() -> Result<()> {
    let path = Path::new("/etc/containers/containers.conf");
    if std::fs::read_to_string(path).is_ok_and(|c| c == CONTAINERS_CONF) {
        return Ok(());
    }
    std::fs::create_dir_all("/etc/containers")?;
    std::fs::write(path, CONTAINERS_CONF).with_context(|| format!("cannot write {}", path.display()))?;
    // A service started with the old settings is stopped, to be started again with these.
    if answers(PODMAN_SOCKET) {
        eprintln!("xtask: restarting podman's API service for the new {}", path.display());
        let _ = Command::new("pkill").args(["-f", "podman system service"]).status();
        let stopping = Instant::now();
        while answers(PODMAN_SOCKET) && stopping.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn start_podman_service() -> Result<()> {
    std::fs::create_dir_all("/run/podman")?;
    let _ = std::fs::remove_file(PODMAN_SOCKET);
    let log_path = cache_dir().join("podman-service.log");
    std::fs::create_dir_all(cache_dir())?;
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let args = ["system", "service", "--time", "0", &format!("unix://{PODMAN_SOCKET}")];
    eprintln!("$ podman {} (log: {})", args.join(" "), log_path.display());
    // Its own process group: it outlives this command and a Ctrl-C meant for it. Started
    // in `/`: every container's conmon inherits the service's directory, and a checkout
    // removed after the run that started it would make each later container fail to start
    // ("write child: broken pipe").
    Command::new("podman")
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start podman's API service")?;
    let started = Instant::now();
    while !answers(PODMAN_SOCKET) {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "podman's API service did not answer on {PODMAN_SOCKET} within 30s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Containers of killed test runs. One whose monitor died with its session needs a second
/// `rm -f` (the first fails with "container state improper").
fn remove_leftovers() -> Result<()> {
    for _ in 0..2 {
        let ids = output(
            "podman",
            &[
                "ps",
                "-aq",
                "--filter",
                "label=org.testcontainers.managed-by=testcontainers",
            ],
        )?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let _ = Command::new("podman").args(["rm", "-f"]).args(&ids).output();
    }
    Ok(())
}

fn build_host_image() -> Result<()> {
    if Command::new("podman")
        .args(["image", "exists", HOST_IMAGE])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    eprintln!("xtask: building {HOST_IMAGE} from this machine's /etc/passwd and /etc/group");
    let root = cache_dir().join("qt-host-base");
    let _ = std::fs::remove_dir_all(&root);
    for dir in [
        "usr", "etc", "tmp", "var/tmp", "run", "root", "home", "data", "proc", "sys", "dev", "var/lib", "var/log",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for dir in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{dir}"), root.join(dir))?;
    }
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    // The services' users (postgres, rabbitmq, redis) with this machine's ids.
    for file in ["passwd", "group", "services", "protocols"] {
        let from = Path::new("/etc").join(file);
        if from.exists() {
            std::fs::copy(&from, root.join("etc").join(file))?;
        }
    }
    std::fs::write(
        root.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
    )?;
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    )?;
    let tar = cache_dir().join("qt-host-base.tar");
    let (root_s, tar_s) = (root.display().to_string(), tar.display().to_string());
    // Sticky and world-writable, as /tmp is: services run as their own users.
    run(
        "chmod",
        &[
            "1777",
            &format!("{root_s}/tmp"),
            &format!("{root_s}/var/tmp"),
            &format!("{root_s}/data"),
        ],
    )?;
    run("tar", &["-C", &root_s, "--numeric-owner", "-cf", &tar_s, "."])?;
    run(
        "podman",
        &[
            "import",
            "--change",
            "WORKDIR /data",
            // SIGINT is the clean stop of every server here (PostgreSQL's fast shutdown).
            "--change",
            "STOPSIGNAL SIGINT",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            &tar_s,
            HOST_IMAGE,
        ],
    )?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a Docker API answers `/_ping` on the unix socket `path`.
fn answers(path: &str) -> bool {
    Path::new(path).exists()
        && Command::new("curl")
            .args(["-sf", "--max-time", "2", "--unix-socket", path, "http://d/_ping"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Whether the engine behind `path` is podman (a symlink to its socket, say), which gets the
/// host images since it has no registry here either.
fn is_podman(path: &str) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p == Path::new(PODMAN_SOCKET))
        || Command::new("curl")
            .args(["-sf", "--max-time", "2", "--unix-socket", path, "http://d/version"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Podman"))
}
