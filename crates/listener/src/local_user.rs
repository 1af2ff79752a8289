//! The name of a Unix user, for the local submission socket's peer: the kernel gives its uid,
//! `/etc/passwd` its name. Users only a directory service knows (LDAP through NSS) are not in
//! that file and are known as `uid<N>`.

use std::path::Path;

/// `uid`'s name in `/etc/passwd`, else `uid<N>`.
pub fn name(uid: u32) -> String {
    name_in(Path::new("/etc/passwd"), uid)
}

/// `uid`'s full name: the first part of its GECOS field (`Alice Smith,room,phone`), if any.
pub fn full_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    gecos(&text, uid)
}

fn gecos(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [_, _, id, _, gecos, ..] = fields[..] else {
            return None;
        };
        let full = gecos.split(',').next()?.trim();
        (id.parse() == Ok(uid) && !full.is_empty()).then(|| full.to_owned())
    })
}

fn name_in(passwd: &Path, uid: u32) -> String {
    std::fs::read_to_string(passwd)
        .ok()
        .and_then(|text| find(&text, uid))
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// The first line whose third field is `uid`: `name:password:uid:gid:gecos:home:shell`.
fn find(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid && !name.is_empty() && !name.starts_with(['+', '-', '#']))
            .then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_named_by_its_passwd_line_or_its_number() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment:x:5:5\n\
                      broken line\n\
                      alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
                      +nis:x:1001:1001::/:\n";
        assert_eq!(find(passwd, 0).as_deref(), Some("root"));
        assert_eq!(find(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(find(passwd, 1001), None);
        assert_eq!(find(passwd, 5), None);
        assert_eq!(find(passwd, 4242), None);
        assert_eq!(name_in(Path::new("/nonexistent/passwd"), 7), "uid7");
        assert_eq!(name(0), "root");
        assert_eq!(gecos(passwd, 1000).as_deref(), Some("Alice"));
        assert_eq!(gecos(passwd, 1001), None);
    }
}
