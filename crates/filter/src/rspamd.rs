//! rspamd over its HTTP protocol (`POST /checkv2`), with the envelope in request headers.
//! Its action decides: `reject` is 550 5.7.1, `soft reject` and `greylist` are 451 4.7.1,
//! `rewrite subject` and `add header` mark the message (`X-Spam: Yes`, and the new subject),
//! `no action` passes. Every accepted message gets rspamd's score and action in
//! `X-Rspamd-Score:` and `X-Rspamd-Action:`, and the header changes rspamd asks for
//! (`milter.add_headers`, `milter.remove_headers`).

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ScanError;
use crate::net::Endpoint;
use crate::pipeline::{Change, Draft, Step};
use backstop_types::Reply;

#[derive(Debug, Clone)]
pub struct Rspamd {
    pub endpoint: Endpoint,
}

/// The largest answer read (rspamd's is a few KiB).
const MAX_ANSWER: u64 = 1 << 20;

impl Rspamd {
    pub async fn check(&self, draft: &Draft) -> Result<Step, ScanError> {
        let failed = |source| ScanError::Network {
            scanner: "rspamd",
            endpoint: self.endpoint.clone(),
            source,
        };
        let protocol = |reason| ScanError::Protocol {
            scanner: "rspamd",
            endpoint: self.endpoint.clone(),
            reason,
        };
        let envelope = &draft.envelope;
        let client = &envelope.client;
        let mut headers = vec![
            ("Content-Length", draft.message.len().to_string()),
            ("IP", client.ip.to_string()),
            ("Helo", client.helo.clone()),
            (
                "From",
                match envelope.sender.address() {
                    Some(a) => a.to_string(),
                    None => "<>".to_owned(),
                },
            ),
        ];
        for recipient in &envelope.recipients {
            headers.push(("Rcpt", recipient.address.to_string()));
        }
        if let Some(name) = &client.ptr {
            headers.push(("Hostname", name.to_string()));
        }
        if let Some(auth) = &client.auth {
            headers.push(("User", auth.user.clone()));
        }
        let mut request =
            String::from("POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nConnection: close\r\n");
        for (name, value) in &headers {
            // The guard below the writer: a value with a line break would add header fields
            // of its own (or end the request early); it is refused, never sent.
            backstop_types::text::one_line("an rspamd request header", value)
                .map_err(|e| protocol(e.to_string()))?;
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = crate::net::connect(&self.endpoint).await.map_err(failed)?;
        stream.write_all(request.as_bytes()).await.map_err(failed)?;
        stream.write_all(&draft.message).await.map_err(failed)?;
        stream.flush().await.map_err(failed)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(failed)?;
        decode_answer(&answer).map_err(|e| protocol(e.0))
    }
}

/// The step for rspamd's whole HTTP answer, as read from the connection: status line, header
/// fields, and a JSON body (by Content-Length, chunked, or to the end).
pub fn decode_answer(answer: &[u8]) -> Result<Step, BadAnswer> {
    let body = http_body(answer).map_err(BadAnswer)?;
    let result: Value =
        serde_json::from_slice(&body).map_err(|e| BadAnswer(format!("not JSON: {e}")))?;
    verdict(&result).map_err(BadAnswer)
}

/// What is wrong with an answer that is not rspamd's protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadAnswer(pub String);

/// The step for rspamd's answer.
fn verdict(result: &Value) -> Result<Step, String> {
    let action = result["action"]
        .as_str()
        .ok_or("the answer has no action")?;
    let score = result["score"].as_f64().unwrap_or(0.0);
    let required = result["required_score"].as_f64().unwrap_or(0.0);
    // What rspamd would have the client told, when it says.
    let told = result["messages"]["smtp_message"].as_str();
    let mut changes = vec![
        Change::AddHeader {
            name: "X-Rspamd-Score".into(),
            value: format!("{score:.2} / {required:.2}"),
        },
        Change::AddHeader {
            name: "X-Rspamd-Action".into(),
            value: action.to_owned(),
        },
    ];
    match action {
        "reject" => {
            return Ok(Step::Refuse(Reply::content_rejected(
                told.unwrap_or("Spam message rejected"),
            )))
        }
        "soft reject" => {
            return Ok(Step::Refuse(Reply::content_deferred(
                told.unwrap_or("Try again later"),
            )))
        }
        "greylist" => {
            return Ok(Step::Refuse(Reply::content_deferred(
                told.unwrap_or("Greylisted, try again later"),
            )))
        }
        "rewrite subject" => {
            if let Some(subject) = result["subject"].as_str() {
                changes.push(Change::ChangeHeader {
                    name: "Subject".into(),
                    occurrence: 1,
                    value: subject.to_owned(),
                });
            }
            changes.push(spam_mark());
        }
        "add header" => changes.push(spam_mark()),
        "no action" => {}
        other => return Err(format!("unknown action {other:?}")),
    }
    let milter = &result["milter"];
    if let Some(remove) = milter["remove_headers"].as_object() {
        for (name, count) in remove {
            // 0 removes every occurrence; n > 0 the nth.
            changes.push(match count.as_u64().unwrap_or(0) {
                0 => Change::RemoveHeader { name: name.clone() },
                n => Change::ChangeHeader {
                    name: name.clone(),
                    occurrence: n as usize,
                    value: String::new(),
                },
            });
        }
    }
    if let Some(add) = milter["add_headers"].as_object() {
        for (name, value) in add {
            let values = match value {
                Value::Array(values) => values.iter().collect(),
                single => vec![single],
            };
            for value in values {
                let text = value.as_str().or_else(|| value["value"].as_str());
                if let Some(text) = text {
                    changes.push(Change::AddHeader {
                        name: name.clone(),
                        value: text.to_owned(),
                    });
                }
            }
        }
    }
    Ok(Step::Continue(changes))
}

fn spam_mark() -> Change {
    Change::AddHeader {
        name: "X-Spam".into(),
        value: "Yes".into(),
    }
}

/// The body of an HTTP response that must be `200`, by Content-Length, chunked, or to the
/// end of the stream.
fn http_body(answer: &[u8]) -> Result<Vec<u8>, String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete HTTP answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("HTTP answer {status:?}"));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body);
    }
    match header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) if len <= body.len() => Ok(body[..len].to_vec()),
        Some(_) => Err("the HTTP answer is cut short".into()),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked encoding")?;
        let size = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("the HTTP answer is cut short")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("the HTTP answer is cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_map_to_steps() {
        let answer = |json: &str| verdict(&serde_json::from_str(json).unwrap());
        assert_eq!(
            answer(r#"{"action":"reject","score":20,"required_score":15}"#),
            Ok(Step::Refuse(Reply::content_rejected(
                "Spam message rejected"
            )))
        );
        assert_eq!(
            answer(r#"{"action":"soft reject","messages":{"smtp_message":"Slow down"}}"#),
            Ok(Step::Refuse(Reply::content_deferred("Slow down")))
        );
        let Ok(Step::Continue(changes)) = answer(
            r#"{"action":"rewrite subject","score":7.5,"required_score":15,"subject":"*** SPAM *** hi",
                "milter":{"add_headers":{"X-Extra":{"value":"1","order":0}}}}"#,
        ) else {
            panic!()
        };
        assert!(changes.contains(&Change::ChangeHeader {
            name: "Subject".into(),
            occurrence: 1,
            value: "*** SPAM *** hi".into()
        }));
        assert!(changes.contains(&spam_mark()));
        assert!(changes.contains(&Change::AddHeader {
            name: "X-Rspamd-Score".into(),
            value: "7.50 / 15.00".into()
        }));
        assert!(changes.contains(&Change::AddHeader {
            name: "X-Extra".into(),
            value: "1".into()
        }));
        assert!(answer(r#"{"action":"explode"}"#).is_err());
        assert!(answer(r#"{}"#).is_err());
    }

    #[test]
    fn http_answers() {
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx"),
            Ok(b"{}".to_vec())
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            Ok(b"{}".to_vec())
        );
        assert!(http_body(b"HTTP/1.1 500 Oops\r\n\r\n").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }
}
