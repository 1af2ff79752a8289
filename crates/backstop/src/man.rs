//! The man pages, generated from the command line itself (clap_mangen), so that they say what
//! the binary does: `backstop.8` and one page per subcommand, nested ones too
//! (`backstop-queue.8`, `backstop-queue-flush.8`), in section 8 as backstop is a daemon and
//! its administration (/usr/sbin). `backstop man DIR` writes them; `cargo xtask dist` puts
//! them in the Debian package.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Writes a page for `command` and for each of its subcommands that is not hidden into `dir`;
/// the files written.
pub fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built once, so that each subcommand knows its full name ("backstop-queue-flush").
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    write_tree(command, dir, true, &mut written)?;
    Ok(written)
}

fn write_tree(
    command: clap::Command,
    dir: &Path,
    top: bool,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub.clone(), dir, false, written)?;
    }
    let page = clap_mangen::Man::new(command)
        .section("8")
        .source(format!("backstop {}", env!("CARGO_PKG_VERSION")))
        .manual("backstop");
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)?;
    if top {
        text.extend_from_slice(FILES_AND_SIGNALS.as_bytes());
    }
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&text)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    Ok(())
}

/// What the command line cannot say about the server: where it reads and keeps things, and
/// what the signals do (roff, after the generated sections of backstop.8).
const FILES_AND_SIGNALS: &str = r#".SH FILES
.TP
\fI/etc/backstop/backstop.toml\fR
The config every command reads unless \fB\-\-config\fR or \fBBACKSTOP_CONFIG\fR names another;
\fBbackstop check\-config\fR reports each of its problems with file, line and key.
.TP
\fI/var/lib/backstop\fR
The data directory of the Debian package's config: the queue, the admin socket, Maildirs.
.TP
\fI/usr/share/doc/backstop/examples\fR
The reference configs of each role, and the documented default config.
.SH SIGNALS
SIGTERM and SIGINT stop the server: no new connections, idle sessions are told 421, and a
transaction under way may finish within \fBsmtp.shutdown_grace\fR. SIGHUP reads the config
again and applies it to new sessions and to delivery; a config with errors changes nothing.
.SH ENVIRONMENT
.TP
\fBBACKSTOP_CONFIG\fR
The config file, when \fB\-\-config\fR is not given.
.TP
\fBRUST_LOG\fR
A log filter that overrides \fB[log] level\fR.
.TP
\fBNOTIFY_SOCKET\fR, \fBJOURNAL_STREAM\fR
Set by systemd: the server reports readiness, reloads and stopping (Type=notify), and starts
each log line with its syslog priority when standard error is the journal.
"#;
