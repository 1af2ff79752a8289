//! The service manager's readiness protocol (systemd's `Type=notify`, sd_notify(3)): one
//! datagram per change of state to the Unix socket `$NOTIFY_SOCKET` names, a path or, after
//! `@`, an abstract name. `READY=1` once the server serves (its listeners bound, its queue
//! open), `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when it begins to stop.
//! Without the variable (not started as `Type=notify`) nothing is sent. The protocol is a few
//! lines of text on a datagram socket, so no library: std's `UnixDatagram` sends them.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

/// Where to tell the service manager what the server is doing: nowhere when there is none.
#[derive(Clone, Debug)]
pub struct Notify {
    socket: Option<SocketAddr>,
}

impl Notify {
    /// The socket `$NOTIFY_SOCKET` names; nowhere when it is unset, or names a socket that is
    /// no Unix socket (logged: the service manager then waits in vain and says so).
    pub fn from_env() -> Notify {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notify::nowhere(),
            Some(name) => match Notify::to(&name) {
                Ok(notify) => notify,
                Err(e) => {
                    warn!(socket = ?name, error = %e, "NOTIFY_SOCKET cannot be used: systemd will not hear that backstop is ready");
                    Notify::nowhere()
                }
            },
        }
    }

    /// Tells the socket `name`: a file system path, or an abstract name after `@`.
    pub fn to(name: &OsStr) -> std::io::Result<Notify> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        let bytes = name.as_bytes();
        let socket = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(name)?,
            // systemd may name other kinds of socket (vsock:...) for virtual machines.
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "neither a path nor an abstract socket name (@...)",
                ))
            }
        };
        Ok(Notify {
            socket: Some(socket),
        })
    }

    /// Tells nobody: not run by a service manager, or run in process by a test.
    pub fn nowhere() -> Notify {
        Notify { socket: None }
    }

    /// The server serves: every listener is bound, the queue is open.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// A reload has begun (SIGHUP); [`Notify::ready`] says it has ended, applied or refused.
    /// The time is when it began, on the monotonic clock, as `Type=notify-reload` wants it.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nSTATUS=reloading the config\nMONOTONIC_USEC={}",
            monotonic_usec()
        ));
    }

    /// The server has begun to stop (SIGTERM): sessions are told 421, deliveries finish.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// A failure is logged, never fatal: the server serves whether or not anyone listens.
    fn send(&self, state: &str) {
        let Some(socket) = &self.socket else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), socket));
        if let Err(e) = sent {
            warn!(error = %e, state, "could not tell systemd (NOTIFY_SOCKET)");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares reloads by.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given, which lives across the call;
    // CLOCK_MONOTONIC exists on every Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec).unwrap_or(0) / 1000;
    seconds * 1_000_000 + micros
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `notify` sends to a socket bound at `address`, one datagram per call.
    fn heard(socket: &UnixDatagram, notify: impl Fn()) -> String {
        notify();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_reloading_and_stopping_reach_a_socket_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notify = Notify::to(path.as_os_str()).unwrap();
        assert_eq!(heard(&socket, || notify.ready()), "READY=1\nSTATUS=serving");
        let reloading = heard(&socket, || notify.reloading());
        let lines: Vec<&str> = reloading.lines().collect();
        assert_eq!(lines[..2], ["RELOADING=1", "STATUS=reloading the config"]);
        let usec: u64 = lines[2]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
        assert_eq!(
            heard(&socket, || notify.stopping()),
            "STOPPING=1\nSTATUS=stopping"
        );
    }

    #[test]
    fn an_abstract_socket_is_named_after_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("backstop-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notify = Notify::to(OsStr::new(&format!("@{name}"))).unwrap();
        assert_eq!(heard(&socket, || notify.ready()), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn other_names_are_refused_and_nowhere_sends_nothing() {
        assert!(Notify::to(OsStr::new("vsock:2:1234")).is_err());
        assert!(Notify::to(OsStr::new("")).is_err());
        // Nothing to send to, nothing to fail.
        Notify::nowhere().ready();
    }
}
