//! A plain `redis-server` (Debian's package) on a free loopback port, for tests that need a
//! direct-source instance next to DAS ones; killed on drop. `direct.rs` has its own, richer one
//! (Unix socket, TLS, cluster).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is required (scripts/test.sh installs it): {e}")
            });
        let r = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while r.client("docs-probe").is_none() {
            assert!(Instant::now() < end, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// A client connection named `name`, kept open while the stream lives.
    pub fn client(&self, name: &str) -> Option<TcpStream> {
        let mut s = TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let cmd = format!(
            "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n${}\r\n{name}\r\n",
            name.len()
        );
        s.write_all(cmd.as_bytes()).ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).ok()?;
        (&buf == b"+OK\r\n").then_some(s)
    }
}
