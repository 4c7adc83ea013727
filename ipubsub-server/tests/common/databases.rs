//! Database servers of a test's own (PostgreSQL, MariaDB, Cassandra, SecantusDB from what
//! `scripts/services.sh` installs), each on an ephemeral loopback port and a data directory of
//! its own, to stop, freeze and start without disturbing the shared servers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (released for the database to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `program` as the `postgres` account when we are root (PostgreSQL refuses root).
pub fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

#[track_caller]
pub fn run(command: &mut Command) {
    let output = command.output().expect("run a database tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the database did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a database process we started, as a crash would, and reaps it.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A database server of the test's own, stopped with a kill and started again on the same
/// data and port.
pub trait Database {
    fn url(&self) -> String;
    fn yaml_backend(&self) -> &'static str;
    fn stop(&mut self);
    fn start(&mut self);
}

pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    pub fn new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed: run scripts/services.sh")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .max()
            .expect("a PostgreSQL version");
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        run(as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data")));
        let mut db = Self {
            bin,
            dir,
            port: free_port(),
        };
        db.start();
        db
    }
}

impl Database for Postgres {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn yaml_backend(&self) -> &'static str {
        "postgres"
    }

    fn stop(&mut self) {
        // `immediate`: the postmaster and every backend go at once, as in a crash.
        run(as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data")));
    }

    fn start(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(as_postgres(&self.bin.join("pg_ctl"))
            .args(["start", "-w", "-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.dir.path().join("data")));
        wait_for_port(self.port, Duration::from_secs(30));
    }
}

impl Postgres {
    /// Sends `signal` to the postmaster and every backend: `STOP` freezes the database with
    /// its connections open, as a vanished host or a partition would, and `CONT` thaws it.
    pub fn signal_all(&self, signal: &str) -> Result<(), String> {
        let pid_file = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .map_err(|e| format!("postmaster.pid: {e}"))?;
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .map_err(|e| format!("pgrep: {e}"))?;
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {pids:?}: {status}"))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A test that failed while the database was frozen left it stopped.
        let _ = self.signal_all("CONT");
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .output();
    }
}

pub struct MariaDb {
    dir: tempfile::TempDir,
    port: u16,
    pub child: Option<Child>,
}

impl MariaDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let user = if is_root() { "root" } else { "" };
        let mut install = Command::new("mariadb-install-db");
        install
            .args([
                "--no-defaults",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", dir.path().join("data").display()));
        if !user.is_empty() {
            install.arg(format!("--user={user}"));
        }
        run(&mut install);
        let mut db = Self {
            dir,
            port: free_port(),
            child: None,
        };
        db.start();
        let socket = db.dir.path().join("sock");
        run(Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-u", "root", "-e", "CREATE DATABASE ipubsub"]));
        db
    }
}

impl Database for MariaDb {
    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/ipubsub", self.port)
    }

    fn yaml_backend(&self) -> &'static str {
        "mysql"
    }

    fn stop(&mut self) {
        kill(&mut self.child);
    }

    fn start(&mut self) {
        let data = self.dir.path().join("data");
        let mut command = Command::new("mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=root");
        }
        self.child = Some(command.spawn().expect("start mariadbd"));
        wait_for_port(self.port, Duration::from_secs(60));
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Apache Cassandra node, from the jars and config template `scripts/services.sh`
/// uses, on ephemeral ports.
pub struct Cassandra {
    dir: tempfile::TempDir,
    port: u16,
    storage_port: u16,
    pub child: Option<Child>,
}

impl Cassandra {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut db = Self {
            dir,
            port: free_port(),
            storage_port: free_port(),
            child: None,
        };
        let template = std::fs::read_to_string(scripts().join("cassandra/cassandra.yaml"))
            .expect("the Cassandra config template");
        let config = template
            .replace(
                "IPUBSUB_CASSANDRA_DIR",
                &db.dir.path().display().to_string(),
            )
            .replace("9042", &db.port.to_string())
            .replace("7000", &db.storage_port.to_string());
        std::fs::write(db.dir.path().join("cassandra.yaml"), config).expect("write config");
        db.start();
        db
    }
}

pub fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

impl Database for Cassandra {
    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn yaml_backend(&self) -> &'static str {
        "cassandra"
    }

    fn stop(&mut self) {
        kill(&mut self.child);
    }

    fn start(&mut self) {
        let services = std::env::var("IPUBSUB_SERVICES_DIR")
            .unwrap_or_else(|_| "/var/lib/ipubsub-services".into());
        let lib = Path::new(&services).join("cassandra/lib");
        assert!(
            lib.join(".complete").exists(),
            "no Cassandra jars in {}: run scripts/services.sh",
            lib.display()
        );
        let dir = self.dir.path();
        let child = Command::new("java")
            .arg(format!(
                "@{}",
                scripts().join("cassandra/jvm17.options").display()
            ))
            .arg(format!(
                "-Dcassandra.config=file://{}/cassandra.yaml",
                dir.display()
            ))
            .arg(format!("-Dcassandra.storagedir={}", dir.display()))
            .arg(format!("-Dcassandra.logdir={}", dir.display()))
            .arg(format!(
                "-Dlogback.configurationFile={}",
                scripts().join("cassandra/logback.xml").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", lib.display()))
            .arg("org.apache.cassandra.service.CassandraDaemon")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Cassandra");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(120));
    }
}

impl Drop for Cassandra {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private SecantusDB (MongoDB wire protocol) from the virtualenv `scripts/services.sh`
/// installs.
pub struct Secantus {
    dir: tempfile::TempDir,
    port: u16,
    pub child: Option<Child>,
}

impl Secantus {
    pub fn new() -> Self {
        let mut db = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            child: None,
        };
        db.start();
        db
    }
}

impl Database for Secantus {
    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    fn yaml_backend(&self) -> &'static str {
        "mongodb"
    }

    fn stop(&mut self) {
        kill(&mut self.child);
    }

    fn start(&mut self) {
        let services = std::env::var("IPUBSUB_SERVICES_DIR")
            .unwrap_or_else(|_| "/var/lib/ipubsub-services".into());
        let server = Path::new(&services).join("secantus/venv/bin/secantusd-py");
        assert!(
            server.exists(),
            "no SecantusDB at {}: run scripts/services.sh",
            server.display()
        );
        let child = Command::new(server)
            .args(["--host", "127.0.0.1", "--standalone", "--sync-on-commit"])
            .args(["--log-level", "ERROR", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start SecantusDB");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(60));
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.stop();
    }
}
