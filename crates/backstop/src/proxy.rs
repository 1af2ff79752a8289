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

use backstop_delivery::smtp::{Client, NextHop, Passthrough, PassthroughError};
use backstop_session::{ContentVerdict, Message, RecipientQuery, RecipientVerdict, TransactionRef};
use backstop_types::{Domain, Notify, Recipient, RemoteReply, Reply};
use tracing::{info, warn};

/// The proxied routes, and the transactions open at their relays.
pub struct Proxy {
    routes: Vec<(Vec<Domain>, NextHop, Client)>,
    open: Mutex<HashMap<u64, Open>>,
}

/// A session's transaction at a relay. `connection` is `None` while a command is on its way.
struct Open {
    number: u64,
    route: usize,
    connection: Option<Passthrough>,
}

impl Proxy {
    pub fn new(routes: Vec<(Vec<Domain>, NextHop, Client)>) -> Option<Arc<Proxy>> {
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
                let (_, hop, client) = &self.routes[route];
                let (hop, client, sender) = (hop.clone(), client.clone(), query.sender.clone());
                let begun =
                    tokio::task::spawn_blocking(move || Passthrough::begin(&client, &hop, &sender))
                        .await;
                match begun {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(PassthroughError::Refused(reply))) => {
                        return RecipientVerdict::Proxied(client_reply(&reply));
                    }
                    Ok(Err(PassthroughError::Unavailable(why))) => {
                        warn!(error = %backstop_types::text::Escaped(&why), "proxy: the relay cannot be reached: 451");
                        return RecipientVerdict::Proxied(Reply::next_hop_unavailable());
                    }
                    Err(e) => {
                        warn!(error = %e, "proxy task");
                        return RecipientVerdict::Proxied(Reply::next_hop_unavailable());
                    }
                }
            }
        };
        let recipient = Recipient {
            address: query.recipient.clone(),
            notify: Notify::Default,
            orcpt: None,
        };
        let asked = tokio::task::spawn_blocking(move || {
            let mut connection = connection;
            let reply = connection.rcpt(&recipient);
            (connection, reply)
        })
        .await;
        match asked {
            Ok((connection, Ok(reply))) => {
                self.put_back(txn, route, Some(connection));
                RecipientVerdict::Proxied(client_reply(&reply))
            }
            Ok((_, Err(e))) => {
                warn!(error = ?e, "proxy: the relay broke off: 451");
                RecipientVerdict::Proxied(Reply::next_hop_unavailable())
            }
            Err(e) => {
                warn!(error = %e, "proxy task");
                RecipientVerdict::Proxied(Reply::next_hop_unavailable())
            }
        }
    }

    /// Sends a proxied message (as backstop's checks left it) to the relay: its final reply.
    pub async fn data(&self, txn: TransactionRef, message: &Message) -> ContentVerdict {
        let Some((_, Some(mut connection))) = self.take(txn) else {
            return ContentVerdict::Relayed(Reply::next_hop_unavailable());
        };
        let body = message.body.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let reply = connection.data(&body);
            connection.quit();
            reply
        })
        .await;
        match sent {
            Ok(Ok(reply)) => {
                info!(code = reply.code, text = %backstop_types::text::Escaped(&reply.text), "proxy: the relay's reply to the message");
                ContentVerdict::Relayed(client_reply(&reply))
            }
            Ok(Err(e)) => {
                warn!(error = ?e, "proxy: the relay broke off during the message: 451");
                ContentVerdict::Relayed(Reply::next_hop_unavailable())
            }
            Err(e) => {
                warn!(error = %e, "proxy task");
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
            tokio::task::spawn_blocking(move || connection.quit());
        }
    }

    /// The session's open transaction, if it is `txn`, taken out; an older one is ended.
    fn take(&self, txn: TransactionRef) -> Option<(usize, Option<Passthrough>)> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&txn.session)?;
        if open.number == txn.number {
            return Some((open.route, open.connection));
        }
        if let Some(stale) = open.connection {
            tokio::task::spawn_blocking(move || stale.quit());
        }
        None
    }

    fn put_back(&self, txn: TransactionRef, route: usize, connection: Option<Passthrough>) {
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

fn client_reply(reply: &RemoteReply) -> Reply {
    Reply::from_next_hop(reply.code, reply.status, &reply.text)
}
