//! Email over SMTP with lettre's pooled async transport (`SMTP_URL`), or to the outbox as `.eml`.
//! Messages are multipart/alternative (text + HTML), with `Message-ID`, `Date` and `From`
//! (`MAIL_FROM`), optional attachments and an optional iCalendar part.

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType},
};

use super::{SendError, Sent, error_chain, outbox::Outbox};

/// A file attached to an email.
#[derive(Debug, Clone)]
pub struct EmailAttachment {
    /// File name shown to the recipient.
    pub filename: String,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Content.
    pub bytes: Vec<u8>,
}

/// One email.
#[derive(Debug, Clone)]
pub struct Email {
    /// Recipient mailbox (`Name <addr>` or `addr`).
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain text body.
    pub text: String,
    /// HTML body.
    pub html: String,
    /// Attachments.
    pub attachments: Vec<EmailAttachment>,
    /// An iCalendar object and its METHOD (`REQUEST`, `CANCEL`), sent as a `text/calendar`
    /// alternative and as an `invite.ics` attachment.
    pub calendar: Option<(String, String)>,
}

/// Where email goes.
#[derive(Clone)]
pub enum EmailSender {
    /// An SMTP server.
    Smtp {
        /// Pooled transport.
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The `From` mailbox.
        from: Mailbox,
    },
    /// No SMTP configured.
    Outbox {
        /// The folder.
        outbox: Outbox,
        /// The `From` mailbox.
        from: Mailbox,
    },
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmailSender::Smtp { from, .. } => write!(f, "EmailSender::Smtp(from {from})"),
            EmailSender::Outbox { outbox, .. } => write!(f, "EmailSender::Outbox({})", outbox.dir().display()),
        }
    }
}

/// Parses `MAIL_FROM`.
pub fn parse_from(mail_from: &str) -> Result<Mailbox, String> {
    mail_from
        .parse()
        .map_err(|e| format!("MAIL_FROM: {mail_from:?} is not a mailbox such as `Name <addr@host>`: {e}"))
}

/// Builds the SMTP transport from `SMTP_URL` (lettre's URL form); a bad URL fails at start-up.
/// `max_connections` bounds the pool (lettre's default of 10 would serialise a worker whose
/// concurrency is higher).
pub fn smtp_transport(url: &str, max_connections: u32) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| format!("SMTP_URL: {}", error_chain(&e)))?;
    Ok(builder
        .timeout(Some(std::time::Duration::from_secs(30)))
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(max_connections))
        .build())
}

impl EmailSender {
    fn from(&self) -> &Mailbox {
        match self {
            EmailSender::Smtp { from, .. } | EmailSender::Outbox { from, .. } => from,
        }
    }

    /// Builds the RFC 5322 message.
    pub fn build(&self, email: &Email) -> Result<Message, SendError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| SendError::permanent(format!("recipient {:?} is not a valid address: {e}", email.to)))?;
        let mut alternative = MultiPart::alternative()
            .singlepart(SinglePart::plain(email.text.clone()))
            .singlepart(SinglePart::html(email.html.clone()));
        if let Some((method, ics)) = &email.calendar {
            let ct = ContentType::parse(&format!("text/calendar; charset=UTF-8; method={method}")).expect("valid content type");
            alternative = alternative.singlepart(SinglePart::builder().header(ct).body(ics.clone()));
        }
        let mut body = if email.attachments.is_empty() && email.calendar.is_none() {
            None
        } else {
            Some(MultiPart::mixed().multipart(alternative.clone()))
        };
        if let Some(mixed) = body.as_mut() {
            for a in &email.attachments {
                let ct = ContentType::parse(&a.content_type)
                    .map_err(|e| SendError::permanent(format!("attachment type {:?}: {e}", a.content_type)))?;
                *mixed = std::mem::replace(mixed, MultiPart::mixed().build())
                    .singlepart(Attachment::new(a.filename.clone()).body(a.bytes.clone(), ct));
            }
            if let Some((_, ics)) = &email.calendar {
                let ct = ContentType::parse("application/ics").expect("valid content type");
                *mixed = std::mem::replace(mixed, MultiPart::mixed().build())
                    .singlepart(Attachment::new("invite.ics".into()).body(ics.clone(), ct));
            }
        }
        let builder = Message::builder()
            .from(self.from().clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(None)
            .date_now();
        let msg = match body {
            Some(mixed) => builder.multipart(mixed),
            None => builder.multipart(alternative),
        };
        msg.map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))
    }

    /// Sends one email.
    pub async fn send(&self, delivery_id: i64, email: &Email) -> Result<Sent, SendError> {
        let msg = self.build(email)?;
        let message_id = msg.headers().get_raw("Message-ID").map(|s| s.trim().to_owned());
        match self {
            EmailSender::Outbox { outbox, .. } => {
                let sent = outbox.write("email", delivery_id, "eml", &msg.formatted()).await?;
                Ok(Sent {
                    provider_message_id: message_id.or(sent.provider_message_id),
                })
            }
            EmailSender::Smtp { transport, .. } => match transport.send(msg).await {
                Ok(_) => Ok(Sent {
                    provider_message_id: message_id,
                }),
                Err(e) => Err(classify_smtp(&e)),
            },
        }
    }
}

/// SMTP 5xx is permanent; 4xx, connection problems, timeouts and a pooled connection the server
/// closed while idle ("incomplete response", lettre #743) are transient.
fn classify_smtp(e: &lettre::transport::smtp::Error) -> SendError {
    let detail = error_chain(e);
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::permanent(format!("SMTP server refused the message ({code}): {detail}"))
    } else if e.is_transient() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::transient(format!("SMTP server deferred the message ({code}): {detail}"))
    } else {
        SendError::transient(format!("SMTP: {detail}"))
    }
}
