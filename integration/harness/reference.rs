//! HAProxy and nginx as reference proxies for the differential test: each started on a
//! free loopback port in front of one server (a `Recorder`), configured as plainly as a
//! production HTTP/1.1 reverse proxy is (HAProxy `mode http`; nginx `proxy_pass` with
//! HTTP/1.1 and keep-alive upstream connections, the client's Host passed on, or the
//! request line's host when there is none), one process each (nginx without a master),
//! stopped by pid when dropped.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Proc, free_port};

/// A running reference proxy.
pub struct Reference {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Reference {
    /// Whether both reference proxies are installed (`make proxies` installs them).
    pub fn installed() -> bool {
        ["haproxy", "nginx"]
            .iter()
            .all(|p| Command::new(p).arg("-v").output().is_ok_and(|o| o.status.success()))
    }

    /// HAProxy in front of `server`.
    pub fn haproxy(server: SocketAddr) -> Reference {
        let dir = tempdir("haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n    \
             timeout http-request 3s\n    timeout http-keep-alive 3s\n\
             frontend edge\n    bind {addr}\n    default_backend app\n\
             backend app\n    server r {server}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let proc = Proc::spawn("haproxy", cmd, dir.path());
        Reference::ready("haproxy", addr, proc, dir)
    }

    /// nginx in front of `server`.
    pub fn nginx(server: SocketAddr) -> Reference {
        let dir = tempdir("nginx");
        let d = dir.path().display();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               client_header_timeout 3s; client_body_timeout 3s; keepalive_timeout 3s;\n\
               upstream app {{ server {server}; keepalive 8; }}\n\
               map $http_host $upstream_host {{ \"\" $host; default $http_host; }}\n\
               server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://app;\n      \
                 proxy_http_version 1.1;\n      proxy_set_header Host $upstream_host;\n      \
                 proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).expect("write nginx.conf");
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"));
        cmd.arg("-c").arg(&path);
        let proc = Proc::spawn("nginx", cmd, dir.path());
        Reference::ready("nginx", addr, proc, dir)
    }

    fn ready(name: &'static str, addr: SocketAddr, mut proc: Proc, dir: tempfile::TempDir) -> Reference {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            assert!(proc.alive(), "{name} exited:\n{}", proc.log_tail(20));
            if std::net::TcpStream::connect(addr).is_ok() {
                return Reference {
                    name,
                    addr,
                    proc,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!("{name} did not start:\n{}", proc.log_tail(20));
    }
}

fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("edgepin-{name}-"))
        .tempdir()
        .expect("temp dir")
}
