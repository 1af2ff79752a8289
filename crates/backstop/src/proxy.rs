//! Proxy mode, for an edge relay: the domains of a `[[route]]` with `proxy = true` are passed
//! through to its relay while the client waits. At the first such RCPT of a transaction (after
//! backstop's own recipient checks) a connection to the relay says MAIL FROM the client's
//! sender; each RCPT is then the relay's to answer, and at the end of DATA (after backstop's
//! content checks) the message goes to the relay and its final reply is the client's. Nothing
//! is queued, so nothing can bounce later; the relay unreachable is 451 4.4.1.
//!
//! One transaction goes to one relay: recipients of other routes, or of domains that are
//! queued, get 451 4.5.3 (the client sends them in a transaction of their own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backstop_session::{ContentVerdict, Message, RecipientQuery, RecipientVerdict, TransactionRef};
use backstop_smtp_client::{Connection, NextHop, Settings};
use backstop_types::{Domain, Notify, Recipient, RemoteReply, Reply};
use tracing::{info, warn};

/// The proxied routes, and the transactions open at their relays.
pub struct Proxy {
    routes: Vec<(Vec<Domain>, NextHop, Settings)>,
    open: Mutex<HashMap<u64, Open>>,
}

/// A session's transaction at a relay. `connection` is `None` while a command is on its way.
struct Open {
    number: u64,
    route: usize,
    connection: Option<Connection>,
}

impl Proxy {
    pub fn new(routes: Vec<(Vec<Domain>, NextHop, Settings)>) -> Option<Arc<Proxy>> {
        (!routes.is_empty()).then(|| {
            Arc::new(Proxy {
                routes,
                open: Mutex::default(),
            })
        })
    }

    /// The proxied route of `domain`, if it has one.
    pub fn route(&self, domain: &Domain) -> Option<usize> {
        self.routes.iter().position(|(d, _, _)| d.contains(domain))
    }

    /// Passes an RCPT for `route`'s domain to its relay (opening the transaction there first):
    /// the relay's reply, for the client.
    pub async fn rcpt(&self, query: &RecipientQuery, route: usize) -> RecipientVerdict {
        let txn = query.transaction;
        let connection = match self.take(txn) {
            Some((open_route, connection)) if open_route != route => {
                // Another relay holds this transaction; give it back.
                self.put_back(txn, open_route, connection);
                return RecipientVerdict::SeparateTransaction;
            }
            Some((_, Some(connection))) => connection,
            _ => {
                let (_, hop, settings) = &self.routes[route];
                match begin(hop, settings, &query.sender).await {
                    Ok(connection) => connection,
                    Err(Begin::Refused(reply)) => {
                        return RecipientVerdict::Proxied(client_reply(&reply));
                    }
                    Err(Begin::Unavailable(why)) => {
                        warn!(error = %backstop_types::text::Escaped(&why), "proxy: the relay cannot be reached: 451");
                        return RecipientVerdict::Proxied(Reply::next_hop_unavailable());
                    }
                }
            }
        };
        let mut connection = connection;
        let recipient = Recipient {
            address: query.recipient.clone(),
            notify: Notify::Default,
            orcpt: None,
        };
        let line = connection.session().rcpt_command(&recipient);
        match connection.command(&line).await {
            Ok(reply) => {
                self.put_back(txn, route, Some(connection));
                RecipientVerdict::Proxied(client_reply(&reply))
            }
            Err(e) => {
                warn!(error = %e, "proxy: the relay broke off: 451");
                RecipientVerdict::Proxied(Reply::next_hop_unavailable())
            }
        }
    }

    /// Sends a proxied message (as backstop's checks left it) to the relay: its final reply.
    pub async fn data(&self, txn: TransactionRef, message: &Message) -> ContentVerdict {
        let Some((_, Some(mut connection))) = self.take(txn) else {
            return ContentVerdict::Relayed(Reply::next_hop_unavailable());
        };
        let sent = async {
            let reply = connection.command("DATA").await?;
            if reply.code != 354 {
                return Ok(reply);
            }
            connection.data(&[&message.body]).await
        }
        .await;
        if connection.is_ready() {
            tokio::spawn(connection.quit());
        }
        match sent {
            Ok(reply) => {
                info!(code = reply.code, text = %backstop_types::text::Escaped(&reply.text), "proxy: the relay's reply to the message");
                ContentVerdict::Relayed(client_reply(&reply))
            }
            Err(e) => {
                warn!(error = %e, "proxy: the relay broke off during the message: 451");
                ContentVerdict::Relayed(Reply::next_hop_unavailable())
            }
        }
    }

    /// Ends what `session` has open at a relay (the session is over, or its message was
    /// refused here).
    pub fn end(&self, session: u64) {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&session);
        if let Some(Open {
            connection: Some(connection),
            ..
        }) = open
        {
            tokio::spawn(connection.quit());
        }
    }

    /// The session's open transaction, if it is `txn`, taken out; an older one is ended.
    fn take(&self, txn: TransactionRef) -> Option<(usize, Option<Connection>)> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&txn.session)?;
        if open.number == txn.number {
            return Some((open.route, open.connection));
        }
        if let Some(stale) = open.connection {
            tokio::spawn(stale.quit());
        }
        None
    }

    fn put_back(&self, txn: TransactionRef, route: usize, connection: Option<Connection>) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                txn.session,
                Open {
                    number: txn.number,
                    route,
                    connection,
                },
            );
    }
}

/// Why a transaction could not be opened at the relay.
enum Begin {
    /// The relay refused our MAIL FROM for good: its reply, for the client.
    Refused(RemoteReply),
    /// It could not be reached, or broke off: 451.
    Unavailable(String),
}

/// Connects to the relay and says MAIL FROM the client's sender.
async fn begin(
    hop: &NextHop,
    settings: &Settings,
    sender: &backstop_types::ReversePath,
) -> Result<Connection, Begin> {
    let unavailable = |e: backstop_smtp_client::ClientError| match e.reply.code / 100 {
        5 if e.source == backstop_smtp_client::Source::Remote => Begin::Refused(e.reply),
        _ => Begin::Unavailable(e.to_string()),
    };
    let mut connection = Connection::open(hop, settings).await.map_err(unavailable)?;
    let reply = connection
        .command(&format!("MAIL FROM:{sender}"))
        .await
        .map_err(unavailable)?;
    if reply.code / 100 != 2 {
        tokio::spawn(connection.quit());
        return Err(Begin::Refused(reply));
    }
    Ok(connection)
}

fn client_reply(reply: &RemoteReply) -> Reply {
    Reply::from_next_hop(reply.code, reply.status, &reply.text)
}
