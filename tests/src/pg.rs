//! A PostgreSQL server of a test's own: `initdb` into a temp folder, started with `pg_ctl` on a
//! free loopback port, stopped and removed when dropped. The server's user `dfs` has a random
//! password, which the engines read from a file (`--meta-password-file`), so the password path
//! is the one tested.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
//! `postgres` user that the distribution's package creates.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Uid and gid the server runs as, when not ours.
    run_as: Option<(u32, u32)>,
    /// The sandbox host it runs on (see [`crate::netns`]) and that host's address; None: here,
    /// on loopback.
    host: Option<(std::sync::Arc<crate::netns::Net>, String)>,
}

/// Where `initdb` and `pg_ctl` are: on PATH, else the newest under /usr/lib/postgresql.
fn bin_dir() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("initdb").is_file()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql): .ci/run installs it")
    })
}

/// The `postgres` user's uid and gid, read from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("cannot read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return (f[2].parse().expect("uid"), f[3].parse().expect("gid"));
        }
    }
    panic!("running as root and there is no postgres user to run PostgreSQL as: install the postgresql package")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

impl Postgres {
    /// Creates and starts a server on loopback.
    pub fn start() -> Postgres {
        Postgres::start_on(None)
    }

    /// Creates and starts a server on host `pg` of the sandbox `net`, reachable from its
    /// other hosts.
    pub fn start_in(net: &std::sync::Arc<crate::netns::Net>) -> Postgres {
        let ip = net.host("pg");
        Postgres::start_on(Some((net.clone(), ip)))
    }

    fn start_on(host: Option<(std::sync::Arc<crate::netns::Net>, String)>) -> Postgres {
        let bin = bin_dir();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = (unsafe { libc::geteuid() } == 0).then(postgres_user);
        let dir = tempfile::Builder::new().prefix("dfs-pg-").tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let password = crate::write_secret_file(&dir.path().join("password"));
        let pwfile = dir.path().join("initdb.pw");
        fs::write(&pwfile, format!("{password}\n")).expect("write pwfile");
        for sub in ["data", "sock"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
            chown(&dir.path().join(sub), run_as);
        }
        chown(&pwfile, run_as);
        let pg = Postgres { dir, bin, port: 0, run_as, host };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "dfs", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("cannot run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        if pg.host.is_some() {
            // initdb lets in loopback only; the sandbox's hosts are on its subnet.
            let hba = pg.data().join("pg_hba.conf");
            let mut text = fs::read_to_string(&hba).expect("read pg_hba.conf");
            text.push_str("host all all 10.99.0.0/24 scram-sha-256\n");
            fs::write(&hba, text).expect("write pg_hba.conf");
        }
        let mut pg = pg;
        for _ in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
        }
        panic!("PostgreSQL did not start; log:\n{}", fs::read_to_string(pg.log()).unwrap_or_default());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("sock").join("server.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.host {
            // `ip netns exec` needs root: the switch to the postgres user comes after it.
            Some((net, _)) => {
                let mut cmd = net.command("pg", "runuser");
                cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
                cmd
            }
            None => {
                let mut cmd = Command::new(self.bin.join(program));
                if let Some((uid, gid)) = self.run_as {
                    cmd.uid(uid).gid(gid);
                }
                cmd
            }
        };
        cmd.env_remove("PGDATA").current_dir(self.dir.path());
        cmd
    }

    fn try_start(&self) -> bool {
        let listen = self.host.as_ref().map_or("127.0.0.1", |(_, ip)| ip.as_str());
        let opts = format!(
            "-p {} -k {} -c listen_addresses={listen} -c max_connections=200",
            self.port,
            self.dir.path().join("sock").display()
        );
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "30", "start"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Turns TLS on: a server certificate signed by `ca` for the server's address (and
    /// `localhost`), then a restart. Clients may still connect without TLS.
    pub fn enable_tls(&self, ca: &crate::certs::Ca) {
        let host = self.host.as_ref().map_or("127.0.0.1", |(_, ip)| ip.as_str()).to_string();
        let (cert, key) = ca.sign("postgres-server", &[&format!("IP:{host}"), "DNS:localhost"]);
        let (to_cert, to_key) = (self.data().join("server.crt"), self.data().join("server.key"));
        fs::copy(&cert, &to_cert).expect("copy the server certificate");
        fs::copy(&key, &to_key).expect("copy the server key");
        fs::set_permissions(&to_key, fs::Permissions::from_mode(0o600)).expect("chmod the key");
        chown(&to_cert, self.run_as);
        chown(&to_key, self.run_as);
        let conf = self.data().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        fs::write(&conf, text).expect("write postgresql.conf");
        self.stop();
        self.restart();
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: sessions are cut, committed data stays).
    pub fn stop(&self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]).output();
    }

    /// Starts the server again on its port.
    pub fn restart(&self) {
        assert!(self.try_start(), "PostgreSQL did not start again; log:\n{}", self.server_log());
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The URL engines are given (`--meta`).
    pub fn url(&self) -> String {
        let host = self.host.as_ref().map_or("127.0.0.1", |(_, ip)| ip.as_str());
        format!("postgres://dfs@{host}:{}/postgres", self.port)
    }

    /// The file holding the password (`--meta-password-file`).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// Runs one SQL statement as the server's superuser, through psql over the local socket;
    /// returns its unaligned output.
    pub fn sql(&self, statement: &str) -> String {
        let psql = if self.bin.join("psql").is_file() { self.bin.join("psql") } else { PathBuf::from("psql") };
        let mut cmd = Command::new(psql);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .current_dir(self.dir.path())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "dfs", "-d", "postgres", "-h"])
            .arg(self.dir.path().join("sock"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(statement)
            .output()
            .expect("cannot run psql");
        assert!(out.status.success(), "psql {statement:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
