//! A real ACME server for tests: Debian's `pebble` with its `pebble-challtestsrv` as the
//! DNS server (every name resolves to 127.0.0.1), both on loopback ports of their own.
//! Pebble validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` — the test
//! points them at edgepin's listeners. Its own HTTPS listener uses a certificate for
//! 127.0.0.1 signed by the test CA (`harness::certs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::client::{self, Target};
use super::process::Proc;
use super::{certs, free_port};

pub struct Pebble {
    pub pebble: Proc,
    pub dns: Proc,
    pub dir: tempfile::TempDir,
    pub acme: SocketAddr,
    pub management: SocketAddr,
}

impl Pebble {
    /// Start pebble validating on `http_port` / `tls_port` of 127.0.0.1, issuing
    /// certificates valid for `validity` (pebble's default is five years).
    pub fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-pebble-")
            .tempdir()
            .expect("temp dir");
        let (dns_port, dns_mgmt) = (free_port(), free_port());
        let mut cmd = Command::new("pebble-challtestsrv");
        cmd.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let dns = Proc::spawn("challtestsrv", cmd, dir.path());
        let acme: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let c = certs();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": acme.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": c.cert,
                "privateKey": c.key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = Proc::spawn("pebble", cmd, dir.path());
        let mut p = Pebble {
            pebble,
            dns,
            dir,
            acme,
            management,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            assert!(self.pebble.alive(), "pebble exited:\n{}", self.pebble.log_tail(20));
            if std::net::TcpStream::connect(self.acme).is_ok() && std::net::TcpStream::connect(self.management).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pebble did not start:\n{}", self.pebble.log_tail(20));
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The root of the certificates pebble issues (made anew at each start), as a PEM file.
    pub async fn root(&self) -> PathBuf {
        let target = Target::tls(self.management);
        let r = client::get(&target, "/roots/0").await.expect("pebble /roots/0");
        assert_eq!(r.status, 200, "{}", r.text());
        let path = self.dir.path().join("issuer-root.pem");
        std::fs::write(&path, &r.body).expect("write pebble root");
        path
    }
}
