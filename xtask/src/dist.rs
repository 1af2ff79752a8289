//! `cargo xtask dist [--profile release|dev] [--out DIR]`: the Debian package, built with
//! `dpkg-deb` alone (no debhelper, no `debian/` source directory): the build's binary,
//! stripped, and what a Debian MTA ships beside it. `dist/debian/` holds the files that go in
//! as they are (the starting config, the maintainer scripts, the sendmail wrapper,
//! copyright); everything else is made here from the repository.
//!
//! The package:
//! - `/usr/sbin/backstop`: a daemon and its administration, as Postfix's; stripped (a release
//!   build carries some 450 MB of debug information);
//! - `/usr/lib/backstop/sendmail`: runs `backstop sendmail "$@"`; the postinst registers it as
//!   the `sendmail` alternative (`/usr/sbin/sendmail`);
//! - `/lib/systemd/system/backstop.service`: `etc/backstop.service` (`Type=notify`) with the
//!   binary's path;
//! - `/etc/backstop/backstop.toml`: `dist/debian/backstop.toml`, a conffile;
//! - `/usr/share/doc/backstop/`: copyright, the README and the guides, and `examples/`: every
//!   file of `etc/` but the unit (the reference configs, fail2ban, Prometheus, Grafana);
//! - `/usr/share/man/man8/`: the pages `backstop man` generates, compressed (`gzip -9n`);
//! - control: `Depends` from `dpkg-shlibdeps` on the binary (libc6, libgcc-s1, libstdc++6 with
//!   their minimal versions), and `adduser` and `openssl` for the postinst.
//!
//! Neither `Provides:` nor `Conflicts: mail-transport-agent`, which Debian's policy asks of an
//! MTA (section 7.5, "Mail transport, delivery and user agents"): backstop is installed beside
//! another MTA while a site moves (docs/guide/migrating-from-postfix.md), and the tests
//! install it beside the Postfix they use as a peer. Every Debian MTA conflicts with
//! `mail-transport-agent`, so providing it alone would already keep dpkg from installing
//! backstop beside Postfix. So `/usr/sbin/sendmail` is an alternative rather than a file of
//! the package (see the postinst; docs/guide/install.md).

mod installed;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use installed::test_installed;

pub const USAGE: &str = "cargo xtask dist [--profile release|dev] [--out DIR]";

/// Which of cargo's profiles the packaged binary is built with.
#[derive(Clone, Copy)]
pub enum Profile {
    /// What a server runs.
    Release,
    /// A debug build: the tests' package, built without the release build's 10 minutes.
    Dev,
}

impl Profile {
    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "dev",
        }
    }

    /// The directory of the target dir cargo puts the profile's binaries in.
    fn directory(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// `cargo xtask dist ARGS`.
pub fn dist(root: &Path, args: &[String]) -> Result<(), String> {
    let mut profile = Profile::Release;
    let mut out = None;
    let mut args = args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        match (arg, args.next()) {
            ("--profile", Some("release")) => profile = Profile::Release,
            ("--profile", Some("dev")) => profile = Profile::Dev,
            ("--out", Some(dir)) => out = Some(PathBuf::from(dir)),
            _ => return Err(format!("usage: {USAGE}")),
        }
    }
    crate::setup::ensure(crate::setup::BUILD)?;
    crate::setup::ensure(crate::setup::DIST)?;
    let binary = build(root, profile)?;
    let out = out.unwrap_or_else(|| crate::target_dir(root).join("dist"));
    let deb = package(root, &binary, &out, compression(profile))?;
    let size = std::fs::metadata(&deb).map_err(|e| e.to_string())?.len();
    println!(
        "xtask: {} ({:.1} MB); install with `sudo dpkg -i {}`",
        deb.display(),
        size as f64 / 1e6,
        deb.display()
    );
    Ok(())
}

/// Builds the binary with `profile`; its path.
pub fn build(root: &Path, profile: Profile) -> Result<PathBuf, String> {
    crate::cargo(
        root,
        &[
            "build",
            "--profile",
            profile.cargo_name(),
            "--package",
            "backstop",
        ],
    )?;
    Ok(crate::target_dir(root)
        .join(profile.directory())
        .join("backstop"))
}

/// How dpkg-deb compresses: xz for a release (the smallest package), gzip's fastest for a
/// debug build (a test's package: a debug binary is large, and xz takes a minute over it).
pub fn compression(profile: Profile) -> &'static [&'static str] {
    match profile {
        Profile::Release => &["-Zxz"],
        Profile::Dev => &["-Zgzip", "-z1"],
    }
}

/// Assembles the package of `binary` under `out` and builds it with dpkg-deb; the .deb's path,
/// `out/backstop_VERSION_ARCH.deb`. The tree it is made from stays beside it
/// (`backstop_VERSION_ARCH.build/debian/backstop`), for a look.
pub fn package(
    root: &Path,
    binary: &Path,
    out: &Path,
    compression: &[&str],
) -> Result<PathBuf, String> {
    let version = text(Command::new(binary).arg("version"))?
        .strip_prefix("backstop ")
        .map(str::to_owned)
        .ok_or_else(|| format!("{} version: not backstop's answer", binary.display()))?;
    let arch = text(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("backstop_{version}_{arch}");
    let work = out.join(format!("{name}.build"));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    // debhelper's layout, which dpkg-shlibdeps expects.
    let stage = work.join("debian/backstop");
    let dist = root.join("dist/debian");

    let sbin = stage.join("usr/sbin/backstop");
    make_parent(&sbin)?;
    run(Command::new("strip")
        .args([
            "--strip-all",
            "--remove-section=.comment",
            "--remove-section=.note",
            "-o",
        ])
        .arg(&sbin)
        .arg(binary))?;
    set_mode(&sbin, 0o755)?;
    copy(
        &dist.join("sendmail"),
        &stage.join("usr/lib/backstop/sendmail"),
        0o755,
    )?;
    put(
        &stage.join("lib/systemd/system/backstop.service"),
        packaged_unit(&read(&root.join("etc/backstop.service"))?)?.as_bytes(),
        0o644,
    )?;
    copy(
        &dist.join("backstop.toml"),
        &stage.join("etc/backstop/backstop.toml"),
        0o644,
    )?;

    let doc = stage.join("usr/share/doc/backstop");
    copy(&dist.join("copyright"), &doc.join("copyright"), 0o644)?;
    gzip_into(&root.join("README.md"), &doc)?;
    for guide in files_in(&root.join("docs/guide"))? {
        gzip_into(&guide, &doc.join("guide"))?;
    }
    copy_examples(&root.join("etc"), &doc.join("examples"))?;

    // The pages of the binary packaged, which must run to make them.
    let pages = work.join("man");
    run(Command::new(&sbin).arg("man").arg(&pages))?;
    for page in files_in(&pages)? {
        gzip_into(&page, &stage.join("usr/share/man/man8"))?;
    }

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&dist.join(script), &debian.join(script), 0o755)?;
    }
    put(
        &debian.join("conffiles"),
        b"/etc/backstop/backstop.toml\n",
        0o644,
    )?;
    let control = Control {
        version: &version,
        arch: &arch,
        depends: &shared_library_depends(&work, &sbin)?,
        installed_kib: installed_kib(&stage)?,
    };
    put(&debian.join("control"), control.render().as_bytes(), 0o644)?;
    set_directory_modes(&stage)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .args(compression)
        .arg("--build")
        .arg(&stage)
        .arg(&deb)
        .stdout(Stdio::null()))?;
    Ok(deb)
}

/// The package's control file.
struct Control<'a> {
    version: &'a str,
    arch: &'a str,
    /// dpkg-shlibdeps's answer: the libraries the binary links.
    depends: &'a str,
    installed_kib: u64,
}

impl Control<'_> {
    fn render(&self) -> String {
        format!(
            "Package: backstop
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Installed-Size: {kib}
Depends: {depends}, adduser, openssl
Section: mail
Priority: optional
Description: mail transfer agent that never sends backscatter
 backstop makes every decision it can while the client is still connected
 (recipients, SPF, DKIM, DMARC, content checks, rate limits, greylisting), so a
 refused message is refused with an SMTP reply and never bounced later to a
 forged sender; a 250 means the message is synced to disk. It sends reports only
 to senders it can vouch for (authenticated users, its own networks, BATV-tagged
 return paths) and quarantines the rest.
 .
 As installed, it listens on loopback only (port 25), takes mail for localhost
 and sends out what this host's programs hand it; the reference configs of the
 MX, submission and edge relay roles are in /usr/share/doc/backstop/examples.
",
            version = self.version,
            arch = self.arch,
            maintainer = maintainer(),
            kib = self.installed_kib,
            depends = self.depends,
        )
    }
}

/// Who made the package: `$DEBFULLNAME <$DEBEMAIL>` as Debian's tools take it, else a local
/// build's placeholder.
fn maintainer() -> String {
    let name = std::env::var("DEBFULLNAME").ok().filter(|n| !n.is_empty());
    match (
        name,
        std::env::var("DEBEMAIL").ok().filter(|e| !e.is_empty()),
    ) {
        (_, Some(email)) if email.contains('<') => email,
        (Some(name), Some(email)) => format!("{name} <{email}>"),
        (None, Some(email)) => format!("backstop local build <{email}>"),
        (_, None) => "backstop local build <root@localhost>".into(),
    }
}

/// `etc/backstop.service` as the package installs it: the binary in /usr/sbin, and a header
/// that says how to change it (its own says how to install it by hand).
fn packaged_unit(unit: &str) -> Result<String, String> {
    if !unit.contains("ExecStart=/usr/local/bin/backstop serve") || !unit.contains("Type=notify") {
        return Err(
            "etc/backstop.service: no ExecStart=/usr/local/bin/backstop serve or no Type=notify"
                .into(),
        );
    }
    let body = match unit.find("\n[Unit]") {
        Some(at) => &unit[at + 1..],
        None => return Err("etc/backstop.service: no [Unit] section".into()),
    };
    Ok(format!(
        "# backstop as a systemd service, from the Debian package (made from etc/backstop.service).\n\
         # Change it with `systemctl edit backstop` (a drop-in in /etc/systemd/system), not here:\n\
         # an upgrade replaces this file.\n\n{}",
        body.replace("/usr/local/bin/backstop", "/usr/sbin/backstop")
    ))
}

/// `Depends` for the shared libraries `binary` links, as dpkg-shlibdeps computes them from
/// the symbols each library's package declares; `work` holds `debian/backstop/`.
fn shared_library_depends(work: &Path, binary: &Path) -> Result<String, String> {
    // dpkg-shlibdeps reads the source's control file for nothing more than this.
    put(
        &work.join("debian/control"),
        b"Source: backstop\n\nPackage: backstop\nArchitecture: any\n",
        0o644,
    )?;
    let relative = binary
        .strip_prefix(work)
        .map_err(|_| format!("{} is not under {}", binary.display(), work.display()))?;
    let said = text(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", relative.display()))
            .current_dir(work),
    )?;
    let depends = said
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .ok_or_else(|| format!("dpkg-shlibdeps said no Depends: {said}"))?;
    for library in ["libc6", "libgcc-s1", "libstdc++6"] {
        if !depends.split(", ").any(|d| d.starts_with(library)) {
            return Err(format!(
                "dpkg-shlibdeps: {library} missing from {depends:?}"
            ));
        }
    }
    Ok(depends.to_owned())
}

/// The installed size in KiB, as dpkg counts it: each file rounded up to a KiB.
fn installed_kib(stage: &Path) -> Result<u64, String> {
    let mut kib = 0;
    for entry in walk(stage)? {
        let meta = std::fs::symlink_metadata(&entry).map_err(|e| e.to_string())?;
        if meta.is_file() && !entry.starts_with(stage.join("DEBIAN")) {
            kib += meta.len().div_ceil(1024);
        }
    }
    Ok(kib)
}

/// Every file of `etc/` but the unit (installed as a unit, not an example), kept in their
/// folders.
fn copy_examples(etc: &Path, examples: &Path) -> Result<(), String> {
    for file in walk(etc)? {
        let relative = file.strip_prefix(etc).map_err(|e| e.to_string())?;
        if file.is_file() && relative != Path::new("backstop.service") {
            copy(&file, &examples.join(relative), 0o644)?;
        }
    }
    Ok(())
}

/// `file` compressed into `dir` as `NAME.gz`, with no name or time stored (`gzip -9n`), as
/// Debian's documentation and man pages are.
fn gzip_into(file: &Path, dir: &Path) -> Result<(), String> {
    let name = file
        .file_name()
        .ok_or_else(|| format!("{}: no file name", file.display()))?;
    let to = dir.join(format!("{}.gz", name.to_string_lossy()));
    make_parent(&to)?;
    let out = std::fs::File::create(&to).map_err(|e| format!("{}: {e}", to.display()))?;
    run(Command::new("gzip")
        .args(["-9n", "--stdout"])
        .arg(file)
        .stdout(out))?;
    set_mode(&to, 0o644)
}

/// Directories of a package are 0755 whatever the umask made them (dpkg-deb refuses a
/// control directory that is not).
fn set_directory_modes(stage: &Path) -> Result<(), String> {
    set_mode(stage, 0o755)?;
    for entry in walk(stage)? {
        if entry.is_dir() {
            set_mode(&entry, 0o755)?;
        }
    }
    Ok(())
}

/// Every path under `dir`, depth first.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() && !path.is_symlink() {
                todo.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(file: &Path) -> Result<String, String> {
    std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    make_parent(to)?;
    std::fs::copy(from, to).map_err(|e| format!("{} to {}: {e}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn put(to: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    make_parent(to)?;
    std::fs::write(to, bytes).map_err(|e| format!("{}: {e}", to.display()))?;
    set_mode(to, mode)
}

fn make_parent(file: &Path) -> Result<(), String> {
    match file.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display())),
        None => Ok(()),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `command`; its standard error in the error when it fails.
fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// What `command` prints, trimmed; it must succeed.
fn text(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|e| format!("{shown}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        false => Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
