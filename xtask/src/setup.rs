//! Installing the Debian packages the build and the tests need, when they are missing.

use std::path::Path;
use std::process::{Command, Stdio};

/// A Debian package and how to tell that it is installed.
pub struct Requirement {
    pub package: &'static str,
    /// Installed when any of these paths exists.
    pub present_if: &'static [&'static str],
}

/// What building needs: a C++ compiler for RocksDB and libclang for its bindings.
pub const BUILD: &[Requirement] = &[
    Requirement {
        package: "g++",
        present_if: &["/usr/bin/g++", "/usr/bin/c++"],
    },
    Requirement {
        package: "libclang-dev",
        present_if: &[
            "/usr/lib/llvm-14/lib/libclang.so",
            "/usr/lib/llvm-15/lib/libclang.so",
            "/usr/lib/llvm-16/lib/libclang.so",
            "/usr/lib/llvm-17/lib/libclang.so",
            "/usr/lib/llvm-18/lib/libclang.so",
            "/usr/lib/llvm-19/lib/libclang.so",
        ],
    },
];

/// swaks, the SMTP client of the end-to-end tests and of the package test, with what its
/// `--tls` needs.
pub const SWAKS: &[Requirement] = &[
    Requirement {
        package: "swaks",
        present_if: &["/usr/bin/swaks"],
    },
    // swaks --tls needs these.
    Requirement {
        package: "libnet-ssleay-perl",
        present_if: &["/usr/share/doc/libnet-ssleay-perl"],
    },
    Requirement {
        package: "libio-socket-ssl-perl",
        present_if: &["/usr/share/perl5/IO/Socket/SSL.pm"],
    },
];

/// The real peers the end-to-end tests talk to (and [`SWAKS`]).
pub const TEST_PEERS: &[Requirement] = &[
    Requirement {
        package: "postfix",
        present_if: &["/usr/sbin/postfix"],
    },
    // Dovecot's LMTP server, the mailbox server an MX hands mail to.
    Requirement {
        package: "dovecot-core",
        present_if: &["/usr/sbin/dovecot"],
    },
    Requirement {
        package: "dovecot-lmtpd",
        present_if: &["/usr/lib/dovecot/lmtp"],
    },
    // Python's smtplib, a TLS client on OpenSSL.
    Requirement {
        package: "python3",
        present_if: &["/usr/bin/python3"],
    },
    // An authoritative DNS server on loopback, for MX routing.
    Requirement {
        package: "knot",
        present_if: &["/usr/sbin/knotd"],
    },
    // OpenLDAP, a recipient source.
    Requirement {
        package: "slapd",
        present_if: &["/usr/sbin/slapd"],
    },
    Requirement {
        package: "ldap-utils",
        present_if: &["/usr/bin/ldapsearch"],
    },
    // Independent DKIM verifiers for what backstop signs: dkimpy, Mail::DKIM, and OpenDKIM's
    // test mode (its package is with the scanners below).
    Requirement {
        package: "python3-dkim",
        present_if: &["/usr/lib/python3/dist-packages/dkim"],
    },
    Requirement {
        package: "libmail-dkim-perl",
        present_if: &["/usr/share/perl5/Mail/DKIM/Verifier.pm"],
    },
    // dkimpy's ARC sealing needs it.
    Requirement {
        package: "python3-authres",
        present_if: &["/usr/lib/python3/dist-packages/authres"],
    },
    // Checks the systemd unit in etc/.
    Requirement {
        package: "systemd",
        present_if: &["/usr/bin/systemd-analyze"],
    },
    // Reads the generated man pages for warnings.
    Requirement {
        package: "groff-base",
        present_if: &["/usr/bin/groff"],
    },
    // Reads the metrics endpoint.
    Requirement {
        package: "curl",
        present_if: &["/usr/bin/curl"],
    },
    // The content scanners: rspamd, ClamAV's clamd, OpenDKIM as a milter, and pymilter
    // (libmilter) for a milter that uses every modification.
    Requirement {
        package: "rspamd",
        present_if: &["/usr/bin/rspamd"],
    },
    Requirement {
        package: "clamav-daemon",
        present_if: &["/usr/sbin/clamd"],
    },
    Requirement {
        package: "opendkim",
        present_if: &["/usr/sbin/opendkim"],
    },
    Requirement {
        package: "python3-milter",
        present_if: &["/usr/lib/python3/dist-packages/Milter"],
    },
    // The site's shared state of several nodes: one Redis, or a cluster of three.
    Requirement {
        package: "redis-server",
        present_if: &["/usr/bin/redis-server"],
    },
    // promtool and Prometheus, to check the shipped alert rules and dashboard queries (the
    // service is not started: the tests run their own on loopback).
    Requirement {
        package: "prometheus",
        present_if: &["/usr/bin/promtool"],
    },
    // fail2ban-regex, to check the shipped filter against backstop's log (its daemon is not
    // started: the install runs under a policy-rc.d that refuses).
    Requirement {
        package: "fail2ban",
        present_if: &["/usr/bin/fail2ban-regex"],
    },
    // The TLS scanner a security review runs against the listeners.
    Requirement {
        package: "testssl.sh",
        present_if: &["/usr/bin/testssl"],
    },
    // A headless browser and its WebDriver server, for the tests that drive a web page
    // (tests/e2e/browser.rs).
    Requirement {
        package: "chromium",
        present_if: &["/usr/bin/chromium"],
    },
    Requirement {
        package: "chromium-driver",
        present_if: &["/usr/bin/chromedriver"],
    },
    // Node's package manager, for TEST_NPM.
    Requirement {
        package: "npm",
        present_if: &["/usr/bin/npm", "/usr/local/bin/npm"],
    },
];

/// What the end-to-end tests take from the npm registry, at these versions (installed with
/// `npm install --global`): Grafana's dashboard schema, the TypeScript types of the dashboard
/// model that Grafana publishes, and the compiler that checks etc/grafana/backstop.json
/// against them (Grafana itself is in no registry this project uses).
pub const TEST_NPM: &[(&str, &str)] = &[("typescript", "5.9.3"), ("@grafana/schema", "13.2.3")];

/// Installs the npm packages missing or at another version (as root), or says what to run.
pub fn ensure_npm(packages: &[(&str, &str)]) -> Result<(), String> {
    let root = Command::new("npm")
        .args(["root", "--global"])
        .output()
        .map_err(|e| format!("npm: {e}"))?;
    let root = Path::new(String::from_utf8_lossy(&root.stdout).trim()).to_owned();
    let missing: Vec<String> = packages
        .iter()
        .filter(|(name, version)| {
            !std::fs::read_to_string(root.join(name).join("package.json"))
                .unwrap_or_default()
                .contains(&format!("\"version\": \"{version}\""))
        })
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "npm install --global --no-audit --no-fund {}",
        missing.join(" ")
    );
    if !is_root() {
        return Err(format!(
            "missing npm packages: {}. Run: sudo {command}",
            missing.join(" ")
        ));
    }
    println!("xtask: installing {}", missing.join(" "));
    sh(&command)
}

/// What `cargo xtask bench` drives and compares with: Postfix, whose package has smtp-source
/// and smtp-sink, and Knot for the MX lookups of the delivery runs.
pub const BENCH: &[Requirement] = &[
    Requirement {
        package: "postfix",
        present_if: &["/usr/sbin/smtp-source"],
    },
    Requirement {
        package: "knot",
        present_if: &["/usr/sbin/knotd"],
    },
    // The shared state's cost on the receive path, with the state in Redis.
    Requirement {
        package: "redis-server",
        present_if: &["/usr/bin/redis-server"],
    },
];

/// What `cargo xtask dist` runs besides dpkg-deb: dpkg-shlibdeps (the package's Depends) and
/// strip.
pub const DIST: &[Requirement] = &[
    Requirement {
        package: "dpkg-dev",
        present_if: &["/usr/bin/dpkg-shlibdeps"],
    },
    Requirement {
        package: "binutils",
        present_if: &["/usr/bin/strip"],
    },
];

/// What the package test needs: the package's own Depends (dpkg -i installs none) and a
/// network namespace for the server (and [`SWAKS`], its SMTP client).
pub const INSTALL_TEST: &[Requirement] = &[
    Requirement {
        package: "adduser",
        present_if: &["/usr/sbin/adduser"],
    },
    Requirement {
        package: "openssl",
        present_if: &["/usr/bin/openssl"],
    },
    Requirement {
        package: "iproute2",
        present_if: &["/usr/sbin/ip", "/bin/ip"],
    },
];

/// Installs what is missing (as root), or says exactly what to run.
pub fn ensure(requirements: &[Requirement]) -> Result<(), String> {
    let missing: Vec<&str> = requirements
        .iter()
        .filter(|r| !r.present_if.iter().any(|p| Path::new(p).exists()))
        .map(|r| r.package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return Err(format!(
            "missing Debian packages: {}. Run: sudo apt-get update && sudo {command}",
            missing.join(" ")
        ));
    }
    println!("xtask: installing {}", missing.join(" "));
    if missing.contains(&"postfix") {
        // Install Postfix without configuring or starting a system instance: the tests run
        // their own throw-away instances.
        sh("echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections")?;
    }
    if missing.contains(&"slapd") {
        // The same for OpenLDAP: the tests start their own slapd on a directory of their own.
        sh("echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections")?;
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        // Keep package scripts from starting services.
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").map_err(|e| e.to_string())?;
        sh("chmod 755 /usr/sbin/policy-rc.d")?;
    }
    let result = sh("apt-get update -qq").and_then(|()| {
        sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
            missing.join(" ")
        ))
    });
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(command: &str) -> Result<(), String> {
    let status = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{command}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{command}` failed ({status})"))
    }
}
