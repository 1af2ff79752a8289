//! Proxy mode, for an edge relay: the domains of a `[[route]]` with `proxy = true` are passed
//! through to its relay while the client waits. At the first such RCPT of a transaction (after
//! backstop's own recipient checks) a connection to the relay says MAIL FROM the client's
//! sender; each RCPT is then the relay's to answer, and at the end of DATA (after backstop's
//! content checks) the message goes to the relay and its final reply is the client's. Nothing
//! is queued, so nothing can bounce later; the relay unreachable is 451 4.4.1.
//!
//! One transaction goes to one relay: recipients of other routes, or of domains that are
//! queued, get 451 4.5.3 (the client sends them in a transaction of their own).

use backstop_session::{ContentVerdict, Message, RecipientQuery, RecipientVerdict, TransactionRef};
use backstop_smtp_client::{Connection, NextHop, Settings};
use backstop_types::text::Escaped;
use backstop_types::{Domain, Notify, Recipient, RemoteReply, Reply};
use tracing::{info, warn};

/// The proxied routes.
pub struct Proxy {
    routes: Vec<Route>,
}

/// A route with `proxy = true`: its domains, its relay, and how to talk to it while a client
/// waits.
pub struct Route {
    pub domains: Vec<Domain>,
    pub relay: NextHop,
    pub client: Settings,
}

/// A session's transaction open at a relay, kept in the session's state; dropped (the session
/// ended, its message was refused here, or a new transaction began), it says QUIT.
pub(crate) struct Open {
    number: u64,
    route: usize,
    /// Taken out while the message is on its way.
    connection: Option<Connection>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let (Some(connection), Ok(runtime)) = (
            self.connection.take(),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(connection.quit());
        }
    }
}

impl Proxy {
    pub fn new(routes: Vec<Route>) -> Option<Proxy> {
        (!routes.is_empty()).then_some(Proxy { routes })
    }

    /// The relay of `route`.
    pub fn relay(&self, route: usize) -> &NextHop {
        &self.routes[route].relay
    }

    /// The proxied route of `domain`, if it has one.
    pub fn route(&self, domain: &Domain) -> Option<usize> {
        self.routes.iter().position(|r| r.domains.contains(domain))
    }

    /// Passes an RCPT for `route`'s domain to its relay (opening the transaction there first,
    /// in `open`): the relay's reply, for the client.
    pub(crate) async fn rcpt(
        &self,
        open: &mut Option<Open>,
        query: &RecipientQuery,
        route: usize,
    ) -> RecipientVerdict {
        let txn = query.transaction;
        // A transaction of an earlier MAIL is over.
        if open.as_ref().is_some_and(|o| o.number != txn.number) {
            *open = None;
        }
        match open {
            // Another relay holds this transaction.
            Some(o) if o.route != route => return RecipientVerdict::SeparateTransaction,
            Some(_) => {}
            None => {
                let Route { relay, client, .. } = &self.routes[route];
                match begin(relay, client, &query.sender).await {
                    Ok(connection) => {
                        *open = Some(Open {
                            number: txn.number,
                            route,
                            connection: Some(connection),
                        });
                    }
                    Err(Begin::Refused(reply)) => {
                        return RecipientVerdict::Proxied(client_reply(&reply));
                    }
                    Err(Begin::Unavailable(why)) => {
                        warn!(error = %Escaped(&why), "proxy: the relay cannot be reached: 451");
                        return RecipientVerdict::Proxied(Reply::next_hop_unavailable());
                    }
                }
            }
        }
        let Some(connection) = open.as_mut().and_then(|o| o.connection.as_mut()) else {
            return RecipientVerdict::Proxied(Reply::next_hop_unavailable());
        };
        let recipient = Recipient {
            address: query.recipient.clone(),
            notify: Notify::Default,
            orcpt: None,
        };
        let line = connection.session().rcpt_command(&recipient);
        match connection.command(&line).await {
            Ok(reply) => RecipientVerdict::Proxied(client_reply(&reply)),
            Err(e) => {
                warn!(error = %e, "proxy: the relay broke off: 451");
                *open = None;
                RecipientVerdict::Proxied(Reply::next_hop_unavailable())
            }
        }
    }

    /// Sends a proxied message (as backstop's checks left it) to the relay: its final reply.
    /// The transaction is over afterwards.
    pub(crate) async fn data(
        &self,
        open: &mut Option<Open>,
        txn: TransactionRef,
        message: &Message,
    ) -> ContentVerdict {
        let connection = match open.take() {
            Some(mut o) if o.number == txn.number => o.connection.take(),
            _ => None,
        };
        let Some(mut connection) = connection else {
            return ContentVerdict::Relayed(Reply::next_hop_unavailable());
        };
        let sent = async {
            let reply = connection.command("DATA").await?;
            if reply.code != 354 {
                return Ok(reply);
            }
            connection
                .data(backstop_smtp_client::Outgoing {
                    pieces: &[message.body.head()],
                    tail: message.body.tail(),
                })
                .await
        }
        .await;
        if connection.is_ready() {
            tokio::spawn(connection.quit());
        }
        match sent {
            Ok(reply) => {
                info!(code = reply.code, text = %Escaped(&reply.text), "proxy: the relay's reply to the message");
                ContentVerdict::Relayed(client_reply(&reply))
            }
            Err(e) => {
                warn!(error = %e, "proxy: the relay broke off during the message: 451");
                ContentVerdict::Relayed(Reply::next_hop_unavailable())
            }
        }
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
