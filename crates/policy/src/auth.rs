//! AUTH for logins the users file does not know: Dovecot's auth socket when configured, else
//! an LDAP directory. The rights such a login gets come from the users file.

use std::net::IpAddr;

use backstop_session::AuthOutcome;
use backstop_types::text::Escaped;
use tracing::warn;

use crate::SitePolicy;

impl SitePolicy {
    /// `None` when there is no other source; a source that cannot answer is a temporary
    /// failure (454), never a login.
    pub(crate) async fn login(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        secured: bool,
    ) -> Option<AuthOutcome> {
        if let Some(dovecot) = &self.auth_dovecot {
            use backstop_filter::dovecot::Login;
            return Some(
                match dovecot.authenticate(user, password, client, secured).await {
                    Ok(Login::Valid { user: canonical }) => {
                        AuthOutcome::Success(self.users.rights_of_other(&canonical, &[]))
                    }
                    Ok(Login::Invalid) => AuthOutcome::Failure,
                    Err(e) => {
                        warn!(user = %Escaped(user), error = %Escaped(&e.0), "Dovecot cannot answer: 454");
                        AuthOutcome::TemporaryFailure
                    }
                },
            );
        }
        use backstop_filter::ldap::Login;
        let directory = self.auth_ldap.as_ref()?;
        Some(match directory.authenticate(user, password).await {
            Ok(Login::Valid(addresses)) => {
                AuthOutcome::Success(self.users.rights_of_other(user, &addresses))
            }
            Ok(Login::Invalid) => AuthOutcome::Failure,
            Err(e) => {
                warn!(user = %Escaped(user), error = %Escaped(&e.0), "login directory cannot answer: 454");
                AuthOutcome::TemporaryFailure
            }
        })
    }
}
