//! The Debian package on this machine, as an operator meets it: built with cargo-deb from
//! the debug binary these tests run (`make deb` builds the release one; the package is
//! the same otherwise), installed with dpkg, its shipped config checked, edgepin started
//! the way its systemd unit starts it (without systemd), one request served, then
//! removed and purged, leaving only the system user (Debian removes none). Root only,
//! like `run_as` (CI runs as root). Also `edgepin --version`, for everyone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::{Backend, Proc, Target, client, eventually, free_port};

const PACKAGE: &str = "edgepin";
const USER: &str = "_edgepin";
const CONFIG: &str = "/etc/edgepin/proxy.yaml";
const UNIT: &str = "/usr/lib/systemd/system/edgepin.service";
/// Where the package puts things; after a purge none of them may exist.
const INSTALLED: [&str; 6] = [
    "/usr/bin/edgepin",
    UNIT,
    "/etc/edgepin",
    "/var/lib/edgepin",
    "/usr/share/edgepin",
    "/usr/share/doc/edgepin",
];
/// The systemd unit's RuntimeDirectory (the pidfile's directory), made by this test as
/// systemd would make it.
const RUNTIME_DIR: &str = "/run/edgepin";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{program} {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// The commit `edgepin --version` should name: HEAD of the source tree, if it is one.
fn source_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = ok(env!("CARGO_BIN_EXE_edgepin"), &["--version"]);
    let expected = format!(
        "edgepin {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        std::env::var("EDGEPIN_COMMIT").unwrap_or_else(|_| source_commit())
    );
    assert_eq!(out.trim(), expected);
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", PACKAGE])
        .stdout
        .starts_with(b"install ok installed")
}

/// Purges the package when dropped, so a failed test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if installed() {
            let _ = run("dpkg", &["--purge", PACKAGE]);
        }
        let _ = std::fs::remove_dir_all(RUNTIME_DIR);
    }
}

/// Build the package from the debug binary: cargo-deb packages only release-like
/// profiles, so the binary is linked into `target/deb-test/` (Cargo.toml's never-built
/// `deb-test` profile) and packaged from there without a build.
fn build_package(out: &Path) -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_edgepin"));
    let target = binary.parent().and_then(Path::parent).expect("the target directory");
    let staged = target.join("deb-test");
    std::fs::create_dir_all(&staged).expect("target/deb-test");
    let link = staged.join("edgepin");
    let _ = std::fs::remove_file(&link);
    if std::fs::hard_link(binary, &link).is_err() {
        std::fs::copy(binary, &link).expect("copy the binary");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(has_deb, "cargo-deb is not installed: `make deb-tool` installs it");
    let dir = format!("{}/", out.display());
    let built = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--profile",
            "deb-test",
            "--strip",
            "--fast",
            "-o",
            &dir,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo deb");
    assert!(built.status.success(), "cargo deb failed:\n{}", text(&built));
    let deb = out.join(format!("edgepin_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.is_file(), "{} not built:\n{}", deb.display(), text(&built));
    deb
}

/// (uid, gid, mode) of `path`.
fn owner_and_mode(path: &str) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// The value of `key=` in the installed unit (the first one).
fn unit_line(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in the shipped config");
    text.replacen(from, to, 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_debian_package_installs_serves_one_request_as_its_user_and_purges_cleanly() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    let started = Instant::now();
    assert!(
        !installed(),
        "an edgepin package is installed on this machine: this test installs and purges its own, so it \
         leaves that one alone (`dpkg --purge edgepin` if an interrupted run left it)"
    );
    let work = tempfile::tempdir().expect("temp dir");
    let deb = build_package(work.path());
    let built_in = started.elapsed();

    let _purge_on_failure = Installed;
    ok("dpkg", &["--install", &deb.display().to_string()]);
    assert!(installed());
    let installed_in = started.elapsed() - built_in;

    // What the maintainer scripts made: the user, its state directory, the stand-in key.
    let user = nix::unistd::User::from_name(USER)
        .expect("passwd")
        .expect("the package made its system user");
    assert!(user.uid.as_raw() < 1000, "a system uid: {}", user.uid);
    assert_eq!(user.dir, Path::new("/var/lib/edgepin"));
    assert_eq!(user.shell, Path::new("/usr/sbin/nologin"));
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    assert_eq!(owner_and_mode("/var/lib/edgepin"), (uid, gid, 0o700));
    assert_eq!(owner_and_mode("/etc/edgepin/tls"), (0, gid, 0o750));
    assert_eq!(owner_and_mode("/etc/edgepin/tls/selfsigned.key"), (0, gid, 0o640));
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(conffiles.contains(CONFIG), "{CONFIG} is a conffile: {conffiles}");
    let version = ok("/usr/bin/edgepin", &["--version"]);
    assert_eq!(
        version.trim(),
        ok(env!("CARGO_BIN_EXE_edgepin"), &["--version"]).trim(),
        "the binary we built"
    );

    // The shipped config, as shipped, passes `check`; so does the unit.
    let checked = ok("/usr/bin/edgepin", &["check", "-c", CONFIG]);
    assert!(checked.contains("run_as: _edgepin"), "{checked}");
    let unit = std::fs::read_to_string(UNIT).expect("the unit is installed");
    if Path::new("/usr/bin/systemd-analyze").exists() {
        ok("systemd-analyze", &["verify", UNIT]);
    }
    assert_eq!(unit_line(&unit, "User"), USER);
    assert_eq!(unit_line(&unit, "Group"), USER);

    // An operator's edit: its listeners on free loopback ports, its servers ours.
    let backend = Backend::start("app1");
    let (https, http, stats) = (free_port(), free_port(), free_port());
    let shipped = std::fs::read_to_string(CONFIG).expect("read the config");
    let mut edited = replace_once(&shipped, "0.0.0.0:443", &format!("127.0.0.1:{https}"));
    edited = replace_once(&edited, "0.0.0.0:80 ", &format!("127.0.0.1:{http} "));
    edited = replace_once(&edited, "127.0.0.1:8404", &format!("127.0.0.1:{stats}"));
    for server in ["127.0.0.1:3001", "127.0.0.1:3002"] {
        edited = replace_once(&edited, server, &backend.addr.to_string());
    }
    std::fs::write(CONFIG, edited).expect("edit the config");

    // Started as the unit starts it: ExecStartPre as the unit's user (it reads the key
    // through the group), then ExecStart, with the unit's RuntimeDirectory; ExecStart as
    // root, as without systemd, so `run_as` makes it the package's user.
    std::fs::create_dir_all(RUNTIME_DIR).expect("runtime dir");
    std::os::unix::fs::chown(RUNTIME_DIR, Some(uid), Some(gid)).expect("chown runtime dir");
    let command = |line: String| {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/");
        cmd
    };
    let mut pre = command(unit_line(&unit, "ExecStartPre"));
    std::os::unix::process::CommandExt::uid(&mut pre, uid);
    std::os::unix::process::CommandExt::gid(&mut pre, gid);
    let pre = pre.output().expect("ExecStartPre");
    assert!(pre.status.success(), "ExecStartPre:\n{}", text(&pre));
    let mut proc = Proc::spawn("edgepin-packaged", command(unit_line(&unit, "ExecStart")), work.path());
    let target = Target::tls(([127, 0, 0, 1], https).into()).trusting(Path::new("/etc/edgepin/tls/selfsigned.crt"));
    let served = eventually(Duration::from_secs(20), async || {
        client::get(&target, "/hello").await.is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(served, "no 200 through the packaged edgepin:\n{}", proc.log_tail(30));
    assert!(backend.hits() >= 1, "served by our server");
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid())).expect("proc status");
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    assert!(
        uids.split_whitespace().all(|u| u == uid.to_string()),
        "runs as {USER} ({uid}): Uid:{uids}"
    );
    let pidfile = Path::new(RUNTIME_DIR).join("edgepin.pid");
    assert_eq!(
        std::fs::read_to_string(&pidfile).map(|p| p.trim().to_string()).ok(),
        Some(proc.pid().to_string())
    );
    let redirect = client::get(&Target::plain(([127, 0, 0, 1], http).into()), "/")
        .await
        .expect("http listener");
    assert_eq!(redirect.status, 308, "plain http redirects to https");

    // A reload, as `systemctl reload` does it: applied, and the copy `check --diff` reads
    // rewritten by the user edgepin now runs as (it was written as root at start).
    let loaded = Path::new(RUNTIME_DIR).join("edgepin.loaded.yaml");
    let edited = std::fs::read_to_string(CONFIG).expect("config");
    std::fs::write(CONFIG, replace_once(&edited, "drain_timeout: 5m", "drain_timeout: 4m")).expect("edit");
    proc.signal(nix::sys::signal::Signal::SIGHUP);
    let stats_target = Target::plain(([127, 0, 0, 1], stats).into());
    let mut last = Json::Null;
    let reloaded = eventually(Duration::from_secs(15), async || {
        let Ok(r) = client::get(&stats_target, "/stats.json").await else {
            return false;
        };
        last = r.json()["reload"]["last"].clone();
        last["generation"] == 2
    })
    .await;
    assert!(reloaded, "reload applied: {last}");
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["message"], "", "no warning (the saved copy was written): {last}");
    let copy = std::fs::read_to_string(&loaded).expect("saved config");
    assert!(
        copy.contains("drain_timeout: 4m"),
        "the saved copy is the reloaded config"
    );

    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| s.success()), "stops on SIGTERM: {exit:?}");
    assert!(!pidfile.exists(), "its user removed the pidfile at exit");
    let _ = std::fs::remove_dir_all(RUNTIME_DIR);

    // Remove: the program goes, the configuration and state stay.
    ok("dpkg", &["--remove", PACKAGE]);
    assert!(!Path::new("/usr/bin/edgepin").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new(CONFIG).exists(), "a removed package keeps its conffile");
    assert!(Path::new("/var/lib/edgepin").exists());
    // Purge: nothing left but the user.
    ok("dpkg", &["--purge", PACKAGE]);
    for path in INSTALLED {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    let status = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    assert!(!installed(), "dpkg still knows it: {}", text(&status));
    assert!(
        nix::unistd::User::from_name(USER).ok().flatten().is_some(),
        "the system user stays (Debian removes none)"
    );
    eprintln!(
        "package built in {:.1} s, installed in {:.1} s, whole test {:.1} s",
        built_in.as_secs_f64(),
        installed_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
