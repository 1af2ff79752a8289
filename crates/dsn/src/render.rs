//! The report (RFC 3464): `multipart/report; report-type=delivery-status` with a text part for
//! people, a `message/delivery-status` part for programs, and the original message
//! (`RET=FULL`) or its header (`RET=HDRS`, and by default).

use backstop_types::{Address, EnhancedStatus, Envelope, Recipient, Ret, UnixTime};
use mail_builder::headers::address::Address as MailAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

/// What a report says of its recipients (RFC 3464 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
}

impl Action {
    /// RFC 3464's name for it (`failed`, `delayed`, `delivered`, `relayed`).
    pub fn name(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient of a report.
#[derive(Debug, Clone)]
pub struct RecipientReport<'a> {
    pub recipient: &'a Recipient,
    pub status: EnhancedStatus,
    /// The server that answered, e.g. `mx1.example.net[192.0.2.25:25]`.
    pub remote_host: Option<&'a str>,
    /// Its reply (code and text), or what happened locally.
    pub diagnostic: Option<(u16, &'a str)>,
    pub last_attempt: UnixTime,
    /// For delays: when backstop gives up.
    pub will_retry_until: Option<UnixTime>,
}

/// Everything a report is made of; the variable parts (date, id, boundary) come in, so that
/// the same input renders the same bytes.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name: Reporting-MTA and the From address's domain.
    pub reporting_mta: &'a str,
    /// Who gets it: the original return path.
    pub to: &'a Address,
    pub envelope: &'a Envelope,
    pub action: Action,
    pub recipients: Vec<RecipientReport<'a>>,
    /// The original message as queued.
    pub original: &'a [u8],
    pub date: UnixTime,
    /// Without angle brackets.
    pub message_id: String,
    pub boundary: String,
}

impl Report<'_> {
    /// Renders the report as a message, CRLF line ends throughout.
    pub fn render(&self) -> Vec<u8> {
        let subject = match self.action {
            Action::Failed => "Undelivered Mail Returned to Sender",
            Action::Delayed => "Delayed Mail (still being retried)",
            Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
        };
        let returned = match self.envelope.dsn.ret {
            Some(Ret::Full) => MimePart::new("message/rfc822", self.original.to_vec()).header(
                "Content-Transfer-Encoding",
                Raw::new(eight_bit(self.original)),
            ),
            _ => {
                let headers = header_block(self.original);
                MimePart::new("text/rfc822-headers", headers.to_vec())
                    .header("Content-Transfer-Encoding", Raw::new(eight_bit(headers)))
            }
        };
        let status = self.delivery_status();
        let body = MimePart::new(
            ContentType::new("multipart/report")
                .attribute("report-type", "delivery-status")
                .attribute("boundary", self.boundary.as_str()),
            vec![
                MimePart::new(
                    ContentType::new("text/plain").attribute("charset", "utf-8"),
                    self.text().into_bytes(),
                )
                .header("Content-Description", Text::new("Notification"))
                .header("Content-Transfer-Encoding", Raw::new("8bit")),
                MimePart::new("message/delivery-status", status.clone().into_bytes())
                    .header("Content-Description", Text::new("Delivery report"))
                    .header(
                        "Content-Transfer-Encoding",
                        Raw::new(eight_bit(status.as_bytes())),
                    ),
                returned.header(
                    "Content-Description",
                    Text::new(match self.envelope.dsn.ret {
                        Some(Ret::Full) => "Undelivered Message",
                        _ => "Undelivered Message Headers",
                    }),
                ),
            ],
        );
        let from = format!("MAILER-DAEMON@{}", self.reporting_mta);
        MessageBuilder::new()
            .from(MailAddress::new_address(Some("Mail Delivery System"), from))
            .to(MailAddress::new_address(None::<&str>, self.to.to_string()))
            .subject(subject)
            .header("Auto-Submitted", Raw::new("auto-replied"))
            .header("Date", Raw::new(self.date.to_rfc5322()))
            .message_id(self.message_id.as_str())
            .body(body)
            .write_to_vec()
            .unwrap_or_default()
    }

    /// The text part: what happened, for whom, what the remote server said.
    fn text(&self) -> String {
        let mut text = format!(
            "This is the mail system at host {}.\r\n\r\n",
            self.reporting_mta
        );
        text.push_str(match self.action {
            Action::Failed => {
                "I'm sorry to have to inform you that your message could not\r\n\
                 be delivered to one or more recipients. It's attached below.\r\n"
            }
            Action::Delayed => {
                "####### THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE. #######\r\n\r\n\
                 Your message could not be delivered yet to one or more recipients.\r\n\
                 The mail system will keep trying until the time given below.\r\n"
            }
            Action::Delivered => "Your message was delivered to the recipients below.\r\n",
            Action::Relayed => {
                "Your message was handed on to the recipients' next mail server, which does not\r\n\
                 send delivery reports of its own.\r\n"
            }
        });
        for r in &self.recipients {
            text.push_str(&format!("\r\n<{}>", r.recipient.address));
            if let Some(host) = r.remote_host {
                text.push_str(&format!(": host {host} said:"));
            }
            match r.diagnostic {
                Some((code, reply)) => {
                    text.push_str(&format!("\r\n    {code} {}", one_line(reply)));
                }
                None => text.push_str(&format!("\r\n    status {}", r.status)),
            }
            if let Some(until) = r.will_retry_until {
                text.push_str(&format!("\r\n    will retry until {}", until.to_rfc5322()));
            }
            text.push_str("\r\n");
        }
        text
    }

    /// The `message/delivery-status` fields (RFC 3464 2.2, 2.3).
    fn delivery_status(&self) -> String {
        let mut s = format!("Reporting-MTA: dns; {}\r\n", self.reporting_mta);
        if let Some(envid) = &self.envelope.dsn.envid {
            s.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
        }
        s.push_str(&format!(
            "Arrival-Date: {}\r\n",
            self.envelope.arrival.to_rfc5322()
        ));
        for r in &self.recipients {
            s.push_str("\r\n");
            if let Some(orcpt) = &r.recipient.orcpt {
                // Checked at RCPT: an atom for the type, no control character in the address.
                s.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
            }
            s.push_str(&format!(
                "Final-Recipient: rfc822; {}\r\n",
                r.recipient.address
            ));
            s.push_str(&format!("Action: {}\r\n", self.action.name()));
            s.push_str(&format!("Status: {}\r\n", r.status));
            if let Some(host) = r.remote_host {
                let name = host.split('[').next().unwrap_or(host);
                s.push_str(&format!("Remote-MTA: dns; {name}\r\n"));
            }
            if let Some((code, reply)) = r.diagnostic {
                s.push_str(&format!(
                    "Diagnostic-Code: smtp; {code} {}\r\n",
                    one_line(reply)
                ));
            }
            s.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                r.last_attempt.to_rfc5322()
            ));
            if let Some(until) = r.will_retry_until {
                s.push_str(&format!("Will-Retry-Until: {}\r\n", until.to_rfc5322()));
            }
        }
        s
    }
}

/// A reply's lines as one line, for a header field.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The header block of a message, up to and including the empty line.
fn header_block(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => &message[..at + 4],
        None => message,
    }
}

fn eight_bit(bytes: &[u8]) -> &'static str {
    if bytes.is_ascii() {
        "7bit"
    } else {
        "8bit"
    }
}

#[cfg(test)]
mod tests;
